//! Password authentication: cleartext, MD5 and SCRAM-SHA-256 (RFC 5802, RFC 7677), the
//! client's side only. The password is only ever an argument here; nothing is logged.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::PgError;

type HmacSha256 = Hmac<Sha256>;

/// A server asking for more PBKDF2 rounds than this is refused: the count is the server's to
/// choose, and a hostile one could otherwise pin a core (PostgreSQL's default is 4096).
const MAX_ITERATIONS: u32 = 1_000_000;

/// `md5` + hex(md5(hex(md5(password + user)) + salt)), PostgreSQL's MD5 password message.
pub fn md5_password(user: &str, password: &str, salt: &[u8]) -> String {
    let inner = hex(&md5::Md5::digest(
        [password.as_bytes(), user.as_bytes()].concat(),
    ));
    let outer = md5::Md5::digest([inner.as_bytes(), salt].concat());
    format!("md5{}", hex(&outer))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One SCRAM-SHA-256 exchange, from the client's first message to the server's signature.
pub struct Scram {
    nonce: String,
    password: String,
    /// Set once the server's first message is answered: the signature it must send back.
    expected: Option<Vec<u8>>,
}

/// The password as PostgreSQL hashes it for SCRAM (RFC 5802 §2.2): normalised by SASLprep
/// (RFC 4013: NFKC, soft hyphens and the like removed, other spaces made plain), or as it is
/// when SASLprep refuses it (prohibited or unassigned characters), which is what the server
/// did when the password was set. Without this, a password that normalises differently —
/// `Ⅸ` for `IX`, a soft hyphen — would never authenticate.
fn sasl_prepared(password: &str) -> String {
    stringprep::saslprep(password).map_or_else(|_| password.to_owned(), |p| p.into_owned())
}

impl Scram {
    pub const MECHANISM: &'static str = "SCRAM-SHA-256";

    pub fn new(password: &str) -> Scram {
        let nonce: [u8; 18] = rand::random();
        Scram {
            nonce: B64.encode(nonce),
            password: sasl_prepared(password),
            expected: None,
        }
    }

    /// `client-first-message`: no channel binding; PostgreSQL ignores the SCRAM user name.
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.first_bare())
    }

    fn first_bare(&self) -> String {
        format!("n=,r={}", self.nonce)
    }

    /// Answers `server-first-message` with `client-final-message`.
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<String, PgError> {
        let server_first = std::str::from_utf8(server_first).map_err(|_| bad("not UTF-8"))?;
        let (mut nonce, mut salt, mut rounds) = (None, None, None);
        for part in server_first.split(',') {
            match part.split_at_checked(2) {
                Some(("r=", v)) => nonce = Some(v),
                Some(("s=", v)) => salt = Some(B64.decode(v).map_err(|_| bad("bad salt"))?),
                Some(("i=", v)) => rounds = v.parse::<u32>().ok(),
                _ => {}
            }
        }
        let nonce = nonce.filter(|n| n.starts_with(&self.nonce) && n.len() > self.nonce.len());
        let nonce = nonce.ok_or_else(|| bad("the server's nonce does not extend ours"))?;
        let salt = salt.ok_or_else(|| bad("no salt"))?;
        let rounds = rounds.filter(|i| (1..=MAX_ITERATIONS).contains(i));
        let rounds = rounds.ok_or_else(|| bad("iteration count missing or out of range"))?;
        let salted = hi(self.password.as_bytes(), &salt, rounds);
        let client_key = hmac(&salted, b"Client Key");
        let stored_key = Sha256::digest(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth = format!("{},{server_first},{without_proof}", self.first_bare());
        let signature = hmac(&stored_key, auth.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = hmac(&salted, b"Server Key");
        self.expected = Some(hmac(&server_key, auth.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks `server-final-message`: the server proves it knew the password too.
    pub fn verify(&self, server_final: &[u8]) -> Result<(), PgError> {
        let text = std::str::from_utf8(server_final).map_err(|_| bad("not UTF-8"))?;
        let given = text
            .strip_prefix("v=")
            .ok_or_else(|| bad("no server signature"))?;
        let given = B64
            .decode(given.trim_end())
            .map_err(|_| bad("bad server signature"))?;
        match &self.expected {
            Some(want) if *want == given => Ok(()),
            _ => Err(bad("the server's signature is wrong")),
        }
    }
}

fn bad(why: &str) -> PgError {
    PgError::Auth(format!("SCRAM: {why}"))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // An HMAC accepts a key of any length: this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// `Hi()` of RFC 5802: PBKDF2 with HMAC-SHA-256, one block.
fn hi(password: &[u8], salt: &[u8], rounds: u32) -> Vec<u8> {
    let mut u = hmac(password, &[salt, &1u32.to_be_bytes()].concat());
    let mut out = u.clone();
    for _ in 1..rounds {
        u = hmac(password, &u);
        out.iter_mut().zip(&u).for_each(|(o, x)| *o ^= x);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_sasl_prepared_as_the_server_does() {
        // RFC 4013 §3's examples: a soft hyphen goes, compatibility characters fold.
        assert_eq!(sasl_prepared("I\u{00AD}X"), "IX");
        assert_eq!(sasl_prepared("user"), "user");
        assert_eq!(sasl_prepared("\u{00AA}"), "a");
        assert_eq!(sasl_prepared("\u{2168}"), "IX");
        // Prohibited (a control character): used as it is, as PostgreSQL does.
        assert_eq!(sasl_prepared("a\u{0007}b"), "a\u{0007}b");
    }

    #[test]
    fn md5_matches_postgresql() {
        // SELECT 'md5' || md5(md5('secret' || 'corral') || 'abcd')
        assert_eq!(
            md5_password("corral", "secret", b"abcd"),
            "md5d57854ae210ecf37dd98a5ecbebd21ce"
        );
    }

    #[test]
    fn scram_follows_the_rfc_7677_example() {
        // RFC 7677 §3, with the user name left out as PostgreSQL does (it is not in the proof's
        // input except through client-first-message-bare, rebuilt here the same way).
        let mut s = Scram::new("pencil");
        s.nonce = "rOprNGfwEbeRWgbNEkqO".into();
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let last = s.client_final(server_first.as_bytes()).unwrap();
        assert!(last.starts_with("c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p="));
        assert!(s.verify(b"v=AAAA").is_err());
    }

    #[test]
    fn hostile_server_messages_are_refused() {
        let mut s = Scram::new("pw");
        for msg in ["", "r=x,s=AAAA,i=1", "r=NONCE", "\u{0}"] {
            assert!(s.client_final(msg.as_bytes()).is_err(), "{msg:?}");
        }
        let n = s.nonce.clone();
        let huge = format!("r={n}x,s=AAAA,i=4000000000");
        assert!(s.client_final(huge.as_bytes()).is_err());
        assert!(s.client_final(&[0xff, 0xfe]).is_err());
        assert!(s.verify(b"v=AAAA").is_err());
    }
}
