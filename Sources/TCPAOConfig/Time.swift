/// RFC 3339 / ISO 8601 date-times as RFC 8177 uses them ("2026-01-01T00:00:00Z",
/// "2026-01-01T02:00:00+02:00", fractional seconds ignored), to seconds since the epoch.
public enum RFC3339 {
    public static func parse(_ s: String) -> Int64? {
        let u = Array(s.utf8)
        func num(_ from: Int, _ n: Int) -> Int? {
            guard from + n <= u.count else { return nil }
            var v = 0
            for i in from..<(from + n) {
                guard u[i] >= 0x30 && u[i] <= 0x39 else { return nil }
                v = v * 10 + Int(u[i] - 0x30)
            }
            return v
        }
        guard u.count >= 20, let y = num(0, 4), u[4] == 0x2D, let mo = num(5, 2), u[7] == 0x2D, let d = num(8, 2),
              u[10] == 0x54 || u[10] == 0x74 || u[10] == 0x20, let h = num(11, 2), u[13] == 0x3A, let mi = num(14, 2),
              u[16] == 0x3A, let se = num(17, 2) else { return nil }
        guard (1...12).contains(mo), (1...daysIn(month: mo, year: y)).contains(d), h < 24, mi < 60, se <= 60 else { return nil }
        var i = 19
        if i < u.count && u[i] == 0x2E { // fraction
            i += 1
            let start = i
            while i < u.count && u[i] >= 0x30 && u[i] <= 0x39 { i += 1 }
            guard i > start else { return nil }
        }
        guard i < u.count else { return nil }
        var offset = 0
        if u[i] == 0x5A || u[i] == 0x7A {
            i += 1
        } else if u[i] == 0x2B || u[i] == 0x2D {
            guard let oh = num(i + 1, 2), i + 3 < u.count, u[i + 3] == 0x3A, let om = num(i + 4, 2), oh < 24, om < 60 else { return nil }
            offset = (oh * 3600 + om * 60) * (u[i] == 0x2B ? 1 : -1)
            i += 6
        } else { return nil }
        guard i == u.count else { return nil }
        return days(y, mo, d) * 86400 + Int64(h * 3600 + mi * 60 + min(se, 59)) - Int64(offset)
    }

    static func daysIn(month: Int, year: Int) -> Int {
        switch month {
        case 2: return (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    /// Days from 1970-01-01 (Howard Hinnant's days_from_civil).
    static func days(_ y0: Int, _ m: Int, _ d: Int) -> Int64 {
        let y = m <= 2 ? y0 - 1 : y0
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return Int64(era * 146097 + doe - 719468)
    }

    /// Formats seconds since the epoch as "YYYY-MM-DDTHH:MM:SSZ".
    public static func format(_ t: Int64) -> String {
        if t == .min { return "the beginning of time" }
        if t == .max { return "no end" }
        let z = t >= 0 ? t / 86400 : (t - 86399) / 86400
        let secs = t - z * 86400
        let zz = z + 719468
        let era = (zz >= 0 ? zz : zz - 146096) / 146097
        let doe = zz - era * 146097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        let y = yoe + era * 400 + (m <= 2 ? 1 : 0)
        func two(_ v: Int64) -> String { v < 10 ? "0\(v)" : "\(v)" }
        return "\(y)-\(two(m))-\(two(d))T\(two(secs / 3600)):\(two(secs / 60 % 60)):\(two(secs % 60))Z"
    }
}
