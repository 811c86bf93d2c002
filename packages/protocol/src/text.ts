/**
 * Text a peer chose (a CLOSE reason, a mapping name, a HELLO agent) is hostile: it may hold newlines
 * that forge log lines, terminal escapes, bidi overrides, or be very long. Two functions, one rule:
 * - `peerText` is where a peer's string is embedded in a message: quoted, escaped, bounded. Call it
 *   once, where the message is built.
 * - `printable` is the sinks' last line of defence (log lines, the prompt, the status line, metric
 *   labels): whatever reached them, control characters come out as escapes and the line stays one.
 */

/** Longest peer string shown, in characters (the rest is summarised). */
export const PEER_TEXT_MAX = 120;

// C0 and C1 controls, DEL, the Unicode line/paragraph separators, bidi embeddings/overrides/isolates,
// zero-width characters and the BOM: everything that can break a line or make text lie about itself;
// and lone surrogates (what a careless decoder makes of invalid data), so the text is well-formed.
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff\ufff9-\ufffb\ud800-\udfff]/gu;

function escapeChar(char: string): string {
  switch (char) {
    case "\n":
      return "\\n";
    case "\r":
      return "\\r";
    case "\t":
      return "\\t";
    default: {
      const code = char.codePointAt(0) ?? 0;
      return code <= 0xff ? `\\x${code.toString(16).padStart(2, "0")}` : `\\u{${code.toString(16)}}`;
    }
  }
}

/** Escapes control and formatting characters (see UNSAFE) so `text` prints as one honest line. */
export function printable(text: string): string {
  return text.replace(UNSAFE, escapeChar);
}

/**
 * A peer-chosen string as it may appear in a log line or a message: in double quotes, with quotes,
 * backslashes and unsafe characters escaped, cut to `max` characters (code points, never half a
 * surrogate pair) with a note of how much was left out.
 */
export function peerText(value: string, max = PEER_TEXT_MAX): string {
  const chars = Array.from(value);
  const shown = chars.length > max ? chars.slice(0, max).join("") : value;
  const escaped = printable(shown.replace(/[\\"]/g, (c) => `\\${c}`));
  const rest = chars.length - max;
  return rest > 0 ? `"${escaped}"… (${rest} more characters)` : `"${escaped}"`;
}

/**
 * A peer-chosen name (a mapping name, a HELLO agent): shown as it is when it is a plain word (letters,
 * digits, `._:@+-`, at most `max` characters), else as peerText() shows it, so a hostile one cannot
 * pass for something else.
 */
export function peerWord(value: string, max = 40): string {
  return value.length <= max && /^[\p{L}\p{N}._:@+-]+$/u.test(value) ? value : peerText(value, max);
}
