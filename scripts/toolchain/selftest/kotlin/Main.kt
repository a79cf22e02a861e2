// Kotlin side of the toolchain self-test: runs each check against the generated bindings (JNA on
// the host JVM), counts failures, ends with "N passed, M failed" and exits non-zero on any failure.
import kotlin.system.exitProcess
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertTrue
import kotlinx.coroutines.async
import kotlinx.coroutines.awaitAll
import kotlinx.coroutines.cancelAndJoin
import kotlinx.coroutines.delay
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kryonix.selftest.Counter
import kryonix.selftest.Observer
import kryonix.selftest.SelftestException
import kryonix.selftest.delayedEcho
import kryonix.selftest.greet
import java.util.concurrent.CopyOnWriteArrayList

private var passed = 0
private var failed = 0

private fun check(name: String, body: () -> Unit) {
    try {
        body()
        passed++
        println("ok   $name")
    } catch (t: Throwable) {
        failed++
        println("FAIL $name: $t")
    }
}

/** Records every value and the thread it arrived on. */
class Recorder : Observer {
    val seen = CopyOnWriteArrayList<Pair<ULong, String>>()
    override fun onCount(value: ULong) {
        seen.add(value to Thread.currentThread().name)
    }
}

fun main() {
    check("function") { assertEquals("hello, kotlin", greet("kotlin")) }
    check("error enum -> exception") {
        assertFailsWith<SelftestException.Empty> { greet("") }
        val e = assertFailsWith<SelftestException.TooLong> { greet("x".repeat(20)) }
        assertEquals(20u, e.len)
    }
    check("object") {
        Counter(5uL).use { c ->
            assertEquals(7uL, c.add(2uL))
            assertEquals(7uL, c.get())
        }
    }
    check("foreign trait called from Rust, on the caller's thread and on a Rust thread") {
        Counter(0uL).use { c ->
            val r = Recorder()
            c.setObserver(r)
            c.add(1uL)
            c.notifyFromThread()
            assertEquals(listOf(1uL, 1uL), r.seen.map { it.first })
            val here = Thread.currentThread().name
            assertEquals(here, r.seen[0].second)
            assertTrue(r.seen[1].second != here, "second call should come from another thread")
        }
    }
    check("async fn from coroutines (10 at once, error path)") {
        runBlocking {
            assertEquals("hi", delayedEcho("hi", 20uL))
            val t0 = System.nanoTime()
            val all = (1..10).map { i -> async { delayedEcho("v$i", 100uL) } }.awaitAll()
            assertEquals((1..10).map { "v$it" }, all)
            val ms = (System.nanoTime() - t0) / 1_000_000
            assertTrue(ms < 900, "10 concurrent 100 ms calls took $ms ms")
            assertFailsWith<SelftestException.Empty> { delayedEcho("", 10uL) }
        }
    }
    check("async fn cancelled") {
        runBlocking {
            val job = launch { delayedEcho("slow", 500uL) }
            delay(20)
            job.cancelAndJoin()
            assertTrue(job.isCancelled)
        }
    }
    println("$passed passed, $failed failed")
    exitProcess(if (failed == 0) 0 else 1)
}
