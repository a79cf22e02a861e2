// The conversion bindings/uniffi.toml names for `Duration` going to the library (whole
// milliseconds). `Duration` has no saturating conversion of its own: a span beyond the range of
// `Int64` milliseconds (some 292 million years) is clamped rather than trapping; a negative one
// stays negative, and the library refuses it with `KryonixError.invalidInput`.

func kryonixWholeMilliseconds(_ duration: Duration) -> Int64 {
    let (seconds, attoseconds) = duration.components
    let (millis, overflow) = seconds.multipliedReportingOverflow(by: 1000)
    if overflow {
        return seconds < 0 ? Int64.min : Int64.max
    }
    let (total, overflowAgain) = millis.addingReportingOverflow(attoseconds / 1_000_000_000_000_000)
    if overflowAgain {
        return seconds < 0 ? Int64.min : Int64.max
    }
    return total
}
