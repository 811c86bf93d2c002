// Imported first by main.ts: citty decides on colours when it loads, and help text written to a file
// or a pipe must not carry ANSI escape codes.
if (!process.stdout.isTTY && process.env.NO_COLOR === undefined) process.env.NO_COLOR = "1";
