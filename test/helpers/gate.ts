/** A gate a test opens when it wants a running command to finish; `entered` tells it the command started. */
export interface Gate {
  readonly promise: Promise<void>;
  /** Resolves when the command is running (inside its handler). */
  readonly entered: Promise<void>;
  enter(): void;
  open(): void;
}

export function gate(): Gate {
  let open!: () => void;
  let enter!: () => void;
  const promise = new Promise<void>((r) => {
    open = r;
  });
  const entered = new Promise<void>((r) => {
    enter = r;
  });
  return { promise, entered, enter, open };
}
