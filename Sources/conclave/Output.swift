#if canImport(Glibc)
import Glibc
#endif

/// Writes a line to standard error (progress, timings, errors), keeping stdout for the command's result.
func printError(_ message: String, terminator: String = "\n") {
    let line = message + terminator
    line.utf8CString.withUnsafeBufferPointer { buf in
        var done = 0
        let total = buf.count - 1
        while done < total {
            let n = write(2, buf.baseAddress! + done, total - done)
            if n <= 0 { break }
            done += n
        }
    }
}

/// Human-readable byte count with binary units (`16.3 MiB`).
func formatBytes(_ n: Int) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var value = Double(n)
    var unit = 0
    while value >= 1024, unit < units.count - 1 {
        value /= 1024
        unit += 1
    }
    return unit == 0 ? "\(n) B" : "\(fixed(value, 2)) \(units[unit])"
}

/// `value` with exactly `decimals` digits after the point, without Foundation's formatter.
func fixed(_ value: Double, _ decimals: Int) -> String {
    guard value.isFinite else { return "\(value)" }
    var scale = 1.0
    for _ in 0..<decimals { scale *= 10 }
    let scaled = (abs(value) * scale).rounded()
    let whole = Int(scaled / scale)
    let frac = Int(scaled - Double(whole) * scale)
    let sign = value < 0 && scaled != 0 ? "-" : ""
    guard decimals > 0 else { return sign + String(whole) }
    let f = String(frac)
    return sign + String(whole) + "." + String(repeating: "0", count: decimals - f.count) + f
}
