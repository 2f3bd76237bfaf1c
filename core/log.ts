import { pino, type Logger, type DestinationStream, type LevelWithSilent } from "pino";

export type { Logger };

/** The one root logger; everything else takes `logger.child({...})`. */
export function createLogger(level: LevelWithSilent = "info", destination?: DestinationStream): Logger {
  const options = { level, base: { app: "ironbus" } };
  return destination === undefined ? pino(options) : pino(options, destination);
}

/** A logger that drops everything (tests that do not look at logs). */
export function silentLogger(): Logger {
  return pino({ level: "silent" });
}
