// Splitting a file's text into chunks of about a given size, on whitespace.

export interface TextChunk {
  /** The chunk's text (trimmed). */
  text: string;
  /** Offset of the chunk's first character in the file's text. */
  offset: number;
}

/**
 * Cuts text into chunks of at most `size` characters, each ending at the last whitespace
 * of its window when there is one in the window's second half (else mid-word). Blank
 * chunks are dropped, so a blank file has no chunks.
 */
export function splitText(text: string, size: number): TextChunk[] {
  if (!Number.isInteger(size) || size < 1) {
    throw new RangeError(`chunk size must be a positive integer, got ${size}`);
  }
  const chunks: TextChunk[] = [];
  let start = 0;
  while (start < text.length) {
    let end = Math.min(start + size, text.length);
    if (end < text.length) {
      const window = text.slice(start, end + 1);
      const cut = Math.max(window.lastIndexOf(" "), window.lastIndexOf("\n"), window.lastIndexOf("\t"));
      if (cut >= size / 2) {
        end = start + cut;
      }
    }
    const raw = text.slice(start, end);
    const trimmed = raw.trim();
    if (trimmed) {
      chunks.push({ text: trimmed, offset: start + (raw.length - raw.trimStart().length) });
    }
    start = end;
  }
  return chunks;
}
