import { describe, expect, it } from "bun:test";
import { PEER_TEXT_MAX, peerText, peerWord, printable } from "../src/index.js";

describe("peerText", () => {
  it("quotes and escapes newlines, escapes, quotes and backslashes", () => {
    expect(peerText('bye\n2026 fake line\r\x1b[31m"x"\\')).toBe('"bye\\n2026 fake line\\r\\x1b[31m\\"x\\"\\\\"');
  });
  it("escapes C1 controls, bidi overrides and line separators", () => {
    expect(peerText("a\u0085b\u202ec\u2028d")).toBe('"a\\x85b\\u{202e}c\\u{2028}d"');
  });
  it("keeps ordinary Unicode and the replacement character", () => {
    expect(peerText("dns-é-名-\ufffd")).toBe('"dns-é-名-\ufffd"');
  });
  it("bounds long strings by code points, never splitting a surrogate pair", () => {
    const long = "😀".repeat(PEER_TEXT_MAX + 5);
    const shown = peerText(long);
    expect(shown).toBe(`"${"😀".repeat(PEER_TEXT_MAX)}"… (5 more characters)`);
  });
});

describe("printable", () => {
  it("makes any text one line", () => {
    const line = printable("a\nb\rc\u0000d\u001b");
    expect(line).not.toMatch(/[\n\r\u0000\u001b]/);
    expect(line).toBe("a\\nb\\rc\\x00d\\x1b");
  });
});

describe("peerWord", () => {
  it("shows plain names as they are and quotes anything else", () => {
    expect(peerWord("dns")).toBe("dns");
    expect(peerWord("game-1.eu")).toBe("game-1.eu");
    expect(peerWord("dns\nfake")).toBe('"dns\\nfake"');
    expect(peerWord("a b")).toBe('"a b"');
    expect(peerWord("x".repeat(41))).toBe(`"${"x".repeat(40)}"… (1 more characters)`);
  });
});
