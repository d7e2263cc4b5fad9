//! A value that must never reach a log, a protocol, a status or an error message: a
//! password, a secret key. (Named so that it is never taken for a Kubernetes `Secret`.)
//!
//! `Sensitive` deliberately implements neither `Display` nor a revealing `Debug`: the only
//! way to read it is [`Sensitive::expose`], which makes every use greppable.

use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct Sensitive(String);

impl Sensitive {
    pub fn new(value: impl Into<String>) -> Self {
        Sensitive(value.into())
    }

    /// The secret value, for the one place that must send it (an IMAP login, an LDAP bind).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sensitive(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_value() {
        let s = Sensitive::new("hunter2");
        assert_eq!(format!("{s:?}"), "Sensitive(***)");
        assert_eq!(s.expose(), "hunter2");
    }
}
