import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

/**
 * The captured IPA exchanges: shared/ sits beside the repository (here and in CI);
 * IRONBUS_IPA_SAMPLES points elsewhere. Missing samples fail the tests that need them, never skip them.
 */
export const IPA_SAMPLES_DIR = process.env["IRONBUS_IPA_SAMPLES"] ?? fileURLToPath(new URL("../../../shared/reference/ipa-samples", import.meta.url));

export function requireSamples(): string {
  if (!existsSync(IPA_SAMPLES_DIR)) {
    throw new Error(`IPA samples not found at ${IPA_SAMPLES_DIR}: shared/ must sit beside the repository, or set IRONBUS_IPA_SAMPLES`);
  }
  return IPA_SAMPLES_DIR;
}
