/// A problem found in a configuration file: where it is (file, line, column, key path), what is
/// wrong, and what would fix it. Never carries a secret.
public struct Diagnostic: Sendable, Equatable, CustomStringConvertible {
    public enum Severity: String, Sendable { case error, warning }

    public var severity: Severity
    public var file: String
    public var line: Int
    public var column: Int
    public var path: String
    public var message: String
    public var fix: String

    public init(_ severity: Severity, file: String, line: Int, column: Int, path: String, _ message: String, fix: String) {
        self.severity = severity
        self.file = file
        self.line = line
        self.column = column
        self.path = path
        self.message = message
        self.fix = fix
    }

    /// `FILE:LINE:COL: error: PATH: MESSAGE (fix: ...)`, the shape compilers use, so editors jump to it.
    public var description: String {
        let loc = line > 0 ? "\(file):\(line):\(column)" : file
        let p = path.isEmpty ? "" : "\(path): "
        let f = fix.isEmpty ? "" : " (fix: \(fix))"
        return "\(loc): \(severity.rawValue): \(p)\(message)\(f)"
    }
}

extension Array where Element == Diagnostic {
    public var errors: [Diagnostic] { filter { $0.severity == .error } }
    public var warnings: [Diagnostic] { filter { $0.severity == .warning } }
    public var hasErrors: Bool { contains { $0.severity == .error } }
}

/// Configuration that could not be loaded; its description lists every problem.
public struct ConfigurationError: Error, CustomStringConvertible {
    public var diagnostics: [Diagnostic]
    public var description: String { diagnostics.map(\.description).joined(separator: "\n") }
}
