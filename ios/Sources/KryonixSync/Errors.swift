// Swift conveniences over the generated types: errors whose `localizedDescription` is the
// library's sentence (not a dump of the enum), and enums an app can iterate.
import Foundation

// `description` comes from the Rust `Display` the bindings export; the generated conformance to
// `LocalizedError` is switched off in bindings/uniffi.toml so that this one is used.
extension KryonixError: LocalizedError {
    public var errorDescription: String? { description }
}

extension TokenError: LocalizedError {
    public var errorDescription: String? { description }
}

extension CallbackError: LocalizedError {
    public var errorDescription: String? { description }
}

extension Tier: CaseIterable {
    /// Most urgent first, as the agent drains them.
    public static var allCases: [Tier] { [.critical, .preferences, .application, .background] }
}

extension Namespace: CaseIterable {
    /// In the order of the namespace table (its Redis database numbers, 0 to 15).
    public static var allCases: [Namespace] {
        [
            .sessions, .authTokens, .userCache, .apiCache, .rateLimiting, .realtimeData,
            .fileMetadata, .searchCache, .tenantConfig, .deviceTrust, .aiModels, .mobileSync,
            .geolocation, .analyticsTemp, .backupStatus, .distributedLocks,
        ]
    }
}
