//! Showing other users' bytes on a terminal: command lines of holders, paths, names and
//! messages that quote them. A holder's command line is whatever that process put in its argv —
//! escape sequences that clear the screen or retitle the terminal, a newline followed by a
//! forged `holders  none: the lock is free` line. Every foreign string in text output goes
//! through [`text`] (or [`bytes`], [`path`]); `--json` output is escaped by JSON itself.
//!
//! Escaped: C0 controls (`\n`, `\t`, `\r`, `\e` for ESC, `\xNN` for the rest), DEL (`\x7f`),
//! C1 controls (`\u{85}`), Unicode bidi controls that reorder what follows (`\u{202e}`) and,
//! in [`bytes`], invalid UTF-8 (`\xNN` per byte). A backslash is left as it is: escaping is
//! for display (never parsed back), and leaving it makes [`text`] idempotent, so a message
//! that quotes an escaped command line can be escaped again as a whole (`report`).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::path::Path;

/// True for a character shown escaped.
fn needs_escape(c: char) -> bool {
    c.is_control() // C0, DEL, C1
        || matches!(c,
            '\u{061c}'                // ARABIC LETTER MARK
            | '\u{200e}' | '\u{200f}' // LRM, RLM
            | '\u{202a}'..='\u{202e}' // LRE, RLE, PDF, LRO, RLO
            | '\u{2066}'..='\u{2069}' // LRI, RLI, FSI, PDI
        )
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\t' => out.push_str("\\t"),
        '\r' => out.push_str("\\r"),
        '\u{1b}' => out.push_str("\\e"),
        c if (c as u32) < 0x80 => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
}

/// `s` with every control character escaped (see the module's documentation); borrowed when
/// there is nothing to escape.
pub(crate) fn text(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if needs_escape(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Pretty JSON made safe for a terminal: serde_json escapes C0 controls and DEL is harmless
/// there, but it writes C1 controls and bidi controls raw. They only occur inside JSON strings,
/// where `\uXXXX` means the same character: the value read back is unchanged.
pub(crate) fn json(s: String) -> String {
    if !s.chars().any(|c| c > '\u{7f}' && needs_escape(c)) {
        return s;
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c > '\u{7f}' && needs_escape(c) {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

/// `b` as text: valid UTF-8 escaped as by [`text`], every byte of an invalid sequence as
/// `\xNN`.
pub(crate) fn bytes(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len());
    for chunk in b.utf8_chunks() {
        out.push_str(&text(chunk.valid()));
        for byte in chunk.invalid() {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    out
}

/// A path as text, escaped as by [`bytes`].
pub(crate) fn path(p: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    bytes(p.as_os_str().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_bidi_and_invalid_utf8_are_escaped() {
        assert_eq!(text("plain text, ünïcode"), "plain text, ünïcode");
        assert!(matches!(text("plain"), Cow::Borrowed(_)));
        assert_eq!(
            text("\u{1b}[2J\u{7}\nholders  none"),
            "\\e[2J\\x07\\nholders  none"
        );
        assert_eq!(
            text("a\u{7f}b\u{85}c\u{202e}d\\"),
            "a\\x7fb\\u{85}c\\u{202e}d\\"
        );
        let once = bytes(b"\x1b]0;x\x07\xff\n");
        assert_eq!(text(&once), once, "escaping twice changes nothing");
        assert_eq!(bytes(b"ok\xff\xfe\x1b"), "ok\\xff\\xfe\\e");
        assert_eq!(path(Path::new("/tmp/a\nb")), "/tmp/a\\nb");
        let j = json(serde_json::to_string("a\u{202e}\u{85}\u{1b}").unwrap());
        assert_eq!(j, "\"a\\u202e\\u0085\\u001b\"");
        assert_eq!(
            serde_json::from_str::<String>(&j).unwrap(),
            "a\u{202e}\u{85}\u{1b}"
        );
    }
}
