// A small async queue: the request side of a streaming call, and leases waiting for work.

/** An unbounded FIFO that async code can wait on; close() ends iteration. */
export class AsyncQueue<T> implements AsyncIterable<T> {
  private readonly items: T[] = [];
  private waiters: ((value: IteratorResult<T>) => void)[] = [];
  private closed = false;

  push(item: T): void {
    if (this.closed) {
      throw new Error("push on a closed queue");
    }
    const waiter = this.waiters.shift();
    if (waiter) {
      waiter({ value: item, done: false });
    } else {
      this.items.push(item);
    }
  }

  close(): void {
    this.closed = true;
    for (const waiter of this.waiters) {
      waiter({ value: undefined, done: true });
    }
    this.waiters = [];
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Everything queued now, without waiting. */
  drain(): T[] {
    return this.items.splice(0, this.items.length);
  }

  /** The next item; done when the queue is closed and empty, or when timeoutMs passes (null). */
  next(timeoutMs?: number): Promise<IteratorResult<T> | null> {
    const item = this.items.shift();
    if (item !== undefined) {
      return Promise.resolve({ value: item, done: false });
    }
    if (this.closed) {
      return Promise.resolve({ value: undefined, done: true });
    }
    return new Promise((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      const waiter = (result: IteratorResult<T>) => {
        clearTimeout(timer);
        resolve(result);
      };
      this.waiters.push(waiter);
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => {
          this.waiters = this.waiters.filter((w) => w !== waiter);
          resolve(null);
        }, timeoutMs);
      }
    });
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    for (;;) {
      const result = await this.next();
      if (result === null || result.done) {
        return;
      }
      yield result.value;
    }
  }
}
