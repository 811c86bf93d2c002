/**
 * The sinks' last line of defence: whatever text reaches a log line, the operator prompt, the status
 * line, the SIGUSR1 snapshot or a metric label comes out as ONE printable line of bounded length.
 * Messages are meant to quote what a peer chose where they are built (`peerText`, in the protocol);
 * this is for everything that slipped through: a stack trace, an OS error, a message not yet quoted.
 *
 * - control and formatting characters (C0/C1, DEL, CR/LF, U+2028/U+2029, bidi overrides, zero-width
 *   characters, the BOM) become escapes, as `printable` does;
 * - lone surrogates (what a careless decoder makes of invalid data) become escapes too, so the line
 *   encodes to UTF-8 as what it says, and JSON.stringify never has to invent `\udXXX`;
 * - the result is at most `max` UTF-16 units, cut never inside an escape or a surrogate pair and
 *   ending with a note of how many characters were left out: nobody can make a multi-megabyte line.
 */
import { printable } from "@mcudpt/protocol";

/** Longest message written on one log line, in characters (before the timestamp and name). */
export const LOG_LINE_MAX = 4096;

/** The protocol's `printable` (which also escapes lone surrogates): one definition of "printable". */
export const printableLine: (text: string) => string = printable;

/**
 * One printable line of at most `max` characters, a "… (N more characters)" note included when the
 * text had to be cut. Idempotent: a line it made goes through it again unchanged.
 */
export function logLine(text: string, max = LOG_LINE_MAX): string {
  if (text.length <= max) {
    const whole = printableLine(text);
    if (whole.length <= max) return whole;
  }
  // Room for the note, whatever it will say (never more characters left out than there are units).
  const budget = Math.max(0, max - note(text.length).length);
  // Character by character (code points), stopping before the first one whose escape would not fit.
  let out = "";
  let used = 0;
  for (const char of text) {
    const piece = printableLine(char);
    if (out.length + piece.length > budget) break;
    out += piece;
    used += char.length;
  }
  return `${out}${note(countCodePoints(text, used))}`;
}

const note = (left: number) => `… (${left} more characters)`;

function countCodePoints(text: string, from: number): number {
  let count = 0;
  for (let i = from; i < text.length; i++) {
    const unit = text.charCodeAt(i);
    // A high surrogate followed by a low one is one character.
    if (unit >= 0xd800 && unit <= 0xdbff && i + 1 < text.length) {
      const next = text.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) i++;
    }
    count++;
  }
  return count;
}
