/**
 * A CommonJS package loaded with a dynamic import(): its named exports are on the namespace when the
 * code runs from source or from one bundle, but only on `default` when the bundle is split into
 * chunks (esbuild --splitting). `interop(mod, key)` returns whichever object carries `key`.
 */
export function interop<T extends object>(mod: T, key: keyof T & string): T {
  if (Reflect.get(mod, key) !== undefined) return mod;
  const fallback: unknown = Reflect.get(mod, "default");
  if (typeof fallback === "object" && fallback !== null && Reflect.get(fallback, key) !== undefined) return fallback as T;
  return mod;
}
