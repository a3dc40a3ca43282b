extension TCPAOD { static let daemonSubcommands: [ParsableCommand.Type] = [] }
import ArgumentParser
