//! The allow-list of enrolled identities read as its operator wrote it,
//! under the one comment rule every credentials file shares
//! ([`credential_lines`](tessera_aggregation::identity::credential_lines)):
//! no key is silently shortened or replaced by a comment, line endings and
//! whitespace do not change what a line says, and a name enrolled twice is
//! refused whatever comments follow it.

use tessera_aggregation::identity::{IdentityKey, IdentityPublicKey, parse_allow_list};

fn key(seed: u8) -> IdentityPublicKey {
    IdentityKey::from_secret_bytes(&[seed; 32]).verifying_key()
}

fn names(text: &str) -> Vec<String> {
    parse_allow_list(text)
        .unwrap_or_else(|e| panic!("{text:?}: {e}"))
        .into_iter()
        .map(|e| e.name)
        .collect()
}

#[test]
fn crlf_tabs_and_trailing_comments_read_as_written() {
    let (a, b) = (key(1), key(2));
    let text =
        format!("# enrolled\r\nalice ed25519:{a} # laptop\r\n\r\nbob\ted25519:{b}\t#phone\r\n");
    let list = parse_allow_list(&text).unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!((list[0].name.as_str(), list[0].key), ("alice", a));
    assert_eq!((list[1].name.as_str(), list[1].key), ("bob", b));
}

/// A comment never shortens a key into something else: a `#` glued to the
/// key refuses the line, and a comment that starts inside the key's digits
/// leaves a key too short to parse.
#[test]
fn a_comment_never_truncates_a_key() {
    let a = key(1).to_string();
    let (head, tail) = a.split_at(40);
    for text in [
        format!("alice ed25519:{a}#laptop\n"),
        format!("alice ed25519:{head}#{tail}\n"),
        format!("alice ed25519:{head} #{tail}\n"),
        format!("alice ed25519:{head} {tail}\n"),
    ] {
        let err = parse_allow_list(&text).unwrap_err();
        assert_eq!(err.line, 1, "{text:?}");
    }
}

/// A key's digits are 64 hex digits, nothing else: the old hand-written
/// decoder's `from_str_radix` took a `+` sign inside a pair.
#[test]
fn a_key_with_anything_but_hex_digits_is_refused() {
    let a = key(1).to_string();
    let signed = format!("+{}", &a[1..]);
    assert!(parse_allow_list(&format!("alice ed25519:{signed}\n")).is_err());
    // Upper case is the same key.
    let upper = a.to_uppercase();
    let list = parse_allow_list(&format!("alice ed25519:{upper}\n")).unwrap();
    assert_eq!(list[0].key, key(1));
}

/// A commented-out enrolment stays out, indented or not.
#[test]
fn a_commented_out_line_enrols_nobody() {
    let (a, b) = (key(1), key(2));
    let text = format!("#alice ed25519:{a}\n   # mallory ed25519:{a}\nbob ed25519:{b}\n");
    assert_eq!(names(&text), ["bob"]);
}

/// The same name or key twice is refused, whatever comment tells the lines
/// apart.
#[test]
fn a_name_or_key_enrolled_twice_is_refused_after_comments_are_stripped() {
    let (a, b) = (key(1), key(2));
    let err = parse_allow_list(&format!(
        "alice ed25519:{a} # laptop\nalice ed25519:{b} # phone\n"
    ))
    .unwrap_err();
    assert_eq!((err.line, err.reason), (2, "this name is already enrolled"));
    let err =
        parse_allow_list(&format!("alice ed25519:{a} # laptop\nbob ed25519:{a}\n")).unwrap_err();
    assert_eq!(
        (err.line, err.reason),
        (2, "this key is already enrolled under another name")
    );
}

/// Whitespace is whatever Unicode calls whitespace, the same for fields and
/// comments (a no-break space separates like a space); a character that
/// only looks like nothing (a zero-width space) is part of the name, which
/// is then refused as not printable ASCII, never enrolled as a look-alike.
#[test]
fn odd_whitespace_separates_fields_and_invisible_characters_are_refused() {
    let a = key(1);
    assert_eq!(
        names(&format!("alice\u{a0}ed25519:{a}\u{a0}# laptop\n")),
        ["alice"]
    );
    for text in [
        format!("ali\u{200b}ce ed25519:{a}\n"),
        format!("\u{feff}alice ed25519:{a}\n"),
    ] {
        let err = parse_allow_list(&text).unwrap_err();
        assert_eq!(
            err.reason, "a name is 1 to 64 printable ASCII characters",
            "{text:?}"
        );
    }
}
