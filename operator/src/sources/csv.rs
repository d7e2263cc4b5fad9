//! The CSV file of IMAP credentials that a MailboxSet names: the mail administrator's list of
//! mailboxes to archive, kept in a Kubernetes Secret.
//!
//! # Format
//!
//! - **Encoding:** UTF-8; a byte-order mark at the start is allowed. Lines end in LF or CRLF.
//!   Blank lines are ignored, but error messages count every physical line of the file,
//!   blank ones included, so their line numbers match an editor's.
//! - **Heading line:** the first non-blank line names the columns and is mandatory. Headings
//!   are compared ignoring case, spaces and punctuation, so `IMAP-Username`, `imap_user_name`
//!   and `IMAP user name` are the same heading. The columns, in any order:
//!
//!   | column            | required | headings accepted                                                          |
//!   |-------------------|----------|----------------------------------------------------------------------------|
//!   | IMAP user name    | yes      | `IMAP user name`, `IMAP user`, `IMAP login`, `User name`, `User`, `Login`, `Login name` |
//!   | IMAP password     | yes      | `IMAP password`, `IMAP pass`, `IMAP passwd`, `Password`, `Passwd`, `Pass`  |
//!   | email address     | no       | `Email address`, `Email`, `Mail address`, `Mail`, `Address`                |
//!   | archive user name | no       | `Archive user name`, `Archive user`, `MailStore user name`, `MailStore user` |
//!
//!   Every heading must be one of these, and no column may be named twice.
//! - **Separator:** `;`, `,`, `|` or TAB: the one that splits the heading line into the
//!   headings above. Use a single separator throughout the file.
//! - **Quoting:** a field whose first non-blank character is `"` or `'` is quoted, and ends at
//!   the next lone quote of the same kind; that quote written twice (`""`, `''`) stands for one.
//!   A quoted field may contain separators and the other quote character, keeps its spaces,
//!   and may be followed only by spaces before the next separator. In an unquoted password a
//!   quote is ordinary text; an unquoted user name or address with a quote in it is refused
//!   (quote the field: `"o'brien"`), because it is far more often a lost separator next to a
//!   quoted password, which would show pieces of the password wherever the name appears.
//!   For the same reason a user name or address may not contain the separator.
//!   A quoted field cannot span lines.
//! - **Values:** user names and email addresses are trimmed of surrounding spaces. A password
//!   is trimmed unless quoted: quote a password that starts or ends with a space, starts with a
//!   quote, or contains the separator. An empty email address or archive user name means none;
//!   without an archive user name the mailbox is stored for the archive user named like the
//!   IMAP user.
//! - **Rows:** every row has as many fields as the heading line, and an IMAP user name and
//!   password. An IMAP user name may appear only once, ignoring case, and no two rows may
//!   be archived into the same place: the same archive user and the same email address
//!   (the IMAP user name where the address is empty), ignoring case as the archive does.
//! - **Errors:** a file with any bad row is rejected as a whole, listing every problem with
//!   its line. Error messages never repeat a password: a row that cannot be split into fields
//!   is not quoted at all, and neither is the heading line, because in a file that lacks its
//!   heading line that line holds a password.

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt;

/// One mailbox from the CSV file. Its `Debug` shows the password as `***`, so rows may be
/// logged.
#[derive(Clone, PartialEq, Eq)]
pub struct CsvRow {
    /// Physical line of the file (1-based), for messages about this mailbox later on.
    pub line: usize,
    pub login: String,
    pub password: String,
    /// Labels the mailbox in the archive.
    pub email: Option<String>,
    /// The archive user to store into; `None` means the one named like `login`.
    pub archive_user: Option<String>,
}

impl fmt::Debug for CsvRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CsvRow")
            .field("line", &self.line)
            .field("login", &self.login)
            .field("password", &"***")
            .field("email", &self.email)
            .field("archive_user", &self.archive_user)
            .finish()
    }
}

/// A problem with the CSV file; its message never contains a password.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CsvError {
    /// Physical line (1-based); `None` for problems with the whole file (encoding, headings).
    pub line: Option<usize>,
    pub message: String,
}

impl CsvError {
    fn file(message: impl Into<String>) -> Self {
        CsvError {
            line: None,
            message: message.into(),
        }
    }

    fn at(line: usize, message: impl Into<String>) -> Self {
        CsvError {
            line: Some(line),
            message: message.into(),
        }
    }
}

impl fmt::Display for CsvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for CsvError {}

/// Parses the whole file. Err holds every error found (at least one).
///
/// All or nothing: archiving part of the list would quietly skip mailboxes, and listing every
/// problem at once spares the administrator a fix-and-retry round per mistake.
pub fn parse(input: &[u8]) -> Result<Vec<CsvRow>, Vec<CsvError>> {
    let text = decode(input).map_err(|e| vec![e])?;
    let mut lines = text
        .split('\n')
        .enumerate()
        .map(|(index, line)| (index + 1, line.strip_suffix('\r').unwrap_or(line)))
        .filter(|(_, line)| !line.trim().is_empty());
    let Some((_, heading)) = lines.next() else {
        return Err(vec![CsvError::file(format!(
            "the file is empty: it needs a heading line; expected {}",
            expected_headings()
        ))]);
    };
    let layout = Layout::detect(heading).map_err(|e| vec![e])?;

    let mut rows = Vec::new();
    let mut errors = Vec::new();
    // Lower-cased login → line of its first occurrence.
    let mut first_lines: HashMap<String, usize> = HashMap::new();
    // Lower-cased (archive user, mailbox label) → line of the row archived there.
    let mut places: HashMap<(String, String), usize> = HashMap::new();
    // Once a quote is left open, the next lines may be the rest of that quoted field (a
    // password with a line break, say): their "logins" may be pieces of a password, so from
    // then on errors give only line numbers.
    let mut may_name_logins = true;
    for (line, text) in lines {
        let fields = match split_fields(text, layout.separator) {
            Ok(fields) => fields,
            Err(e) => {
                if matches!(e, SplitError::Unclosed { .. }) {
                    may_name_logins = false;
                }
                errors.push(CsvError::at(line, e.message(&layout)));
                continue;
            }
        };
        if fields.len() != layout.columns.len() {
            let mut message = format!(
                "expected {} fields as in the heading line, found {}",
                layout.columns.len(),
                fields.len()
            );
            if fields.len() > layout.columns.len() {
                message.push_str(&format!(
                    "; quote a field that contains {}",
                    separator_name(layout.separator)
                ));
            }
            errors.push(CsvError::at(line, message));
            continue;
        }

        let mut row = CsvRow {
            line,
            login: String::new(),
            password: String::new(),
            email: None,
            archive_user: None,
        };
        let errors_before = errors.len();
        for (column, Field { value, quoted }) in layout.columns.iter().zip(fields) {
            // A quote inside an unquoted user name or address is most often a separator
            // lost next to a quoted password, which would put pieces of the password into
            // a name that is shown everywhere. Such a row is refused, and its text is not
            // echoed. (Passwords keep quotes as literal text.)
            if *column != Column::Password {
                if !quoted && value.contains(['"', '\'']) {
                    errors.push(CsvError::at(
                        line,
                        format!(
                            "the {} contains a quote character but is not quoted; quote the field if the \
                             quote belongs to it, or check the row for a missing separator",
                            column.name()
                        ),
                    ));
                } else if value.contains(layout.separator) {
                    // No user name or address contains the separator; a quote opened too
                    // early (swallowing the next field) does produce one.
                    errors.push(CsvError::at(
                        line,
                        format!(
                            "the {} contains the separator {}; check the row's quotes",
                            column.name(),
                            separator_name(layout.separator)
                        ),
                    ));
                }
            }
            match column {
                Column::Login => row.login = value.trim().to_owned(),
                Column::Password => row.password = value,
                Column::Email => row.email = non_empty(&value),
                Column::ArchiveUser => row.archive_user = non_empty(&value),
            }
        }

        let named = if may_name_logins && errors.len() == errors_before {
            format!(" of {:?}", row.login)
        } else {
            String::new()
        };
        if row.login.is_empty() {
            errors.push(CsvError::at(line, "the IMAP user name is empty"));
        } else {
            match first_lines.entry(row.login.to_lowercase()) {
                Entry::Occupied(first) => errors.push(CsvError::at(
                    line,
                    format!(
                        "the IMAP user name{named} is already on line {} (user names are compared ignoring case)",
                        first.get()
                    ),
                )),
                Entry::Vacant(slot) => {
                    slot.insert(line);
                }
            }
        }
        if row.password.is_empty() {
            let named = if row.login.is_empty() { "" } else { &named };
            errors.push(CsvError::at(
                line,
                format!("the IMAP password{named} is empty"),
            ));
        }
        if errors.len() == errors_before {
            let user = row.archive_user.as_deref().unwrap_or(&row.login);
            let label = row.email.as_deref().unwrap_or(&row.login);
            match places.entry((user.to_lowercase(), label.to_lowercase())) {
                Entry::Occupied(first) => {
                    let place = if may_name_logins {
                        format!(" (archive user {user:?}, mailbox {label:?})")
                    } else {
                        String::new()
                    };
                    errors.push(CsvError::at(
                        line,
                        format!(
                            "this mailbox would be archived into the same place{place} as the one on line {}, \
                             and the two would overwrite each other's records (compared ignoring case); \
                             give one of them another archive user name or email address",
                            first.get()
                        ),
                    ));
                }
                Entry::Vacant(slot) => {
                    slot.insert(line);
                    rows.push(row);
                }
            }
        }
    }

    if errors.is_empty() {
        Ok(rows)
    } else {
        Err(errors)
    }
}

/// The separators tried on the heading line; on a tie when diagnosing a bad heading line, the
/// earlier one is assumed.
const SEPARATORS: [char; 4] = [';', ',', '|', '\t'];

fn separator_name(separator: char) -> String {
    if separator == '\t' {
        "TAB".to_owned()
    } else {
        format!("'{separator}'")
    }
}

/// Checks the encoding up front so that the parser works on `&str` and the administrator
/// learns where the file stopped being UTF-8 (typically a spreadsheet's legacy export).
fn decode(input: &[u8]) -> Result<&str, CsvError> {
    // Excel's "Unicode text" export is UTF-16; saying so beats "invalid byte on line 1".
    if input.starts_with(&[0xFF, 0xFE]) || input.starts_with(&[0xFE, 0xFF]) {
        return Err(CsvError::file(
            "the file is UTF-16 text; save it as UTF-8 (Excel: \"CSV UTF-8\")",
        ));
    }
    let text = std::str::from_utf8(input).map_err(|e| {
        let line = 1 + input[..e.valid_up_to()]
            .iter()
            .filter(|&&byte| byte == b'\n')
            .count();
        CsvError::file(format!(
            "the file is not UTF-8 text: its first invalid byte is on line {line}; save it as UTF-8 (Excel: \"CSV UTF-8\")"
        ))
    })?;
    Ok(text.strip_prefix('\u{feff}').unwrap_or(text))
}

fn non_empty(value: &str) -> Option<String> {
    let value = value.trim();
    (!value.is_empty()).then(|| value.to_owned())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Column {
    Login,
    Password,
    Email,
    ArchiveUser,
}

impl Column {
    const ALL: [Column; 4] = [
        Column::Login,
        Column::Password,
        Column::Email,
        Column::ArchiveUser,
    ];

    fn name(self) -> &'static str {
        match self {
            Column::Login => "IMAP user name",
            Column::Password => "IMAP password",
            Column::Email => "email address",
            Column::ArchiveUser => "archive user name",
        }
    }

    fn required(self) -> bool {
        matches!(self, Column::Login | Column::Password)
    }

    /// Headings written as a person would, so that error messages can list them; they are
    /// compared after [`normalize`], so variants in case, spacing and punctuation need no
    /// entry of their own. Keep the module documentation's table in step.
    fn headings(self) -> &'static [&'static str] {
        match self {
            Column::Login => &[
                "IMAP user name",
                "IMAP user",
                "IMAP login",
                "User name",
                "User",
                "Login",
                "Login name",
            ],
            Column::Password => &[
                "IMAP password",
                "IMAP pass",
                "IMAP passwd",
                "Password",
                "Passwd",
                "Pass",
            ],
            Column::Email => &["Email address", "Email", "Mail address", "Mail", "Address"],
            // MailStore is what many administrators migrate from; its term is kept.
            Column::ArchiveUser => &[
                "Archive user name",
                "Archive user",
                "MailStore user name",
                "MailStore user",
            ],
        }
    }

    fn from_heading(heading: &str) -> Option<Column> {
        let key = normalize(heading);
        Column::ALL
            .into_iter()
            .find(|column| column.headings().iter().any(|h| normalize(h) == key))
    }
}

/// Spreadsheets and people spell headings many ways (`E-Mail`, `e_mail`, `EMAIL`); only the
/// letters and digits carry meaning.
fn normalize(heading: &str) -> String {
    heading
        .chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// The "expected" half of every heading error, built from [`Column::headings`] so that the
/// message always matches what is accepted.
fn expected_headings() -> String {
    let columns: Vec<String> = Column::ALL
        .into_iter()
        .map(|column| {
            let headings: Vec<String> = column
                .headings()
                .iter()
                .map(|h| format!("\"{h}\""))
                .collect();
            format!(
                "{} ({}: {})",
                column.name(),
                if column.required() {
                    "required"
                } else {
                    "optional"
                },
                headings.join(", ")
            )
        })
        .collect();
    format!(
        "headings, in any order, ignoring case, spaces and punctuation: {}; separated by ';', ',', '|' or TAB",
        columns.join("; ")
    )
}

/// How the file's rows are laid out, as read from its heading line.
struct Layout {
    separator: char,
    /// The column of each field, in file order.
    columns: Vec<Column>,
}

/// One heading line split at one separator: the column each heading names, if any.
type Split = (char, Vec<Option<Column>>);

impl Layout {
    /// Finds the separator by trying each one that occurs on the heading line and keeping the
    /// one whose headings all make sense: a comma can legitimately sit inside a
    /// semicolon-separated heading, so mere presence decides nothing.
    fn detect(line: &str) -> Result<Layout, CsvError> {
        let mut separators: Vec<char> = SEPARATORS
            .into_iter()
            .filter(|&separator| line.contains(separator))
            .collect();
        if separators.is_empty() {
            // A single heading: every separator splits it alike, and the diagnosis says
            // which columns are missing.
            separators.push(SEPARATORS[0]);
        }
        let splits: Vec<Split> = separators
            .into_iter()
            .filter_map(|separator| {
                let headings = split_fields(line, separator).ok()?;
                let columns = headings
                    .iter()
                    .map(|h| Column::from_heading(&h.value))
                    .collect();
                Some((separator, columns))
            })
            .collect();
        let valid: Vec<&Split> = splits
            .iter()
            .filter(|(_, columns)| heading_problems(columns).is_empty())
            .collect();
        match valid.as_slice() {
            [(separator, columns)] => Ok(Layout {
                separator: *separator,
                columns: columns.iter().flatten().copied().collect(),
            }),
            [] => Err(diagnose_headings(&splits)),
            several => {
                let names: Vec<String> = several.iter().map(|(s, _)| separator_name(*s)).collect();
                Err(CsvError::file(format!(
                    "the heading line can be split into valid headings at {}; use only one of these separators",
                    names.join(" and at ")
                )))
            }
        }
    }

    fn field_label(&self, field: usize) -> String {
        match self.columns.get(field - 1) {
            Some(column) => format!("field {field} ({})", column.name()),
            None => format!("field {field}"),
        }
    }
}

/// What is wrong with a heading line; empty if nothing.
fn heading_problems(columns: &[Option<Column>]) -> Vec<String> {
    let positions = |wanted: Option<Column>| -> Vec<usize> {
        (1..)
            .zip(columns)
            .filter(|&(_, &column)| column == wanted)
            .map(|(position, _)| position)
            .collect()
    };
    let mut problems = Vec::new();
    let unknown = positions(None);
    if !unknown.is_empty() {
        let noun = if unknown.len() == 1 {
            "heading"
        } else {
            "headings"
        };
        problems.push(format!("unknown {noun} in {}", column_list(&unknown)));
    }
    for column in Column::ALL {
        let at = positions(Some(column));
        if at.len() > 1 {
            problems.push(format!("{} named in {}", column.name(), column_list(&at)));
        } else if at.is_empty() && column.required() {
            problems.push(format!("no {} column", column.name()));
        }
    }
    problems
}

/// "column 3", "columns 1 and 3", "columns 1, 3 and 4".
fn column_list(positions: &[usize]) -> String {
    match positions {
        [one] => format!("column {one}"),
        [init @ .., last] => {
            let init: Vec<String> = init.iter().map(usize::to_string).collect();
            format!("columns {} and {last}", init.join(", "))
        }
        [] => String::new(),
    }
}

/// One error for a heading line that no separator makes valid. It describes the headings by
/// position and meaning but never quotes them: when the heading line is missing, the line
/// taken for it is a row with a password.
fn diagnose_headings(splits: &[Split]) -> CsvError {
    let expected = expected_headings();
    // The split recognising most headings is the likeliest intent; `min_by_key` keeps the
    // first of equals, i.e. the earlier separator in SEPARATORS.
    let best = splits
        .iter()
        .min_by_key(|(_, columns)| Reverse(columns.iter().flatten().count()));
    let message = match best {
        None => format!("the heading line has a quote that is not closed; expected {expected}"),
        Some((_, columns)) if columns.iter().all(Option::is_none) => format!(
            "the first line has no recognised heading (is the heading line missing?); expected {expected}"
        ),
        Some((separator, columns)) => {
            let found: Vec<String> = (1..)
                .zip(columns)
                .map(|(position, column)| {
                    format!("{position} {}", column.map_or("unknown", Column::name))
                })
                .collect();
            let split = if columns.len() == 1 {
                "no separator".to_owned()
            } else {
                format!("split at {}", separator_name(*separator))
            };
            format!(
                "the heading line does not name the columns as expected: {}. Found ({split}): {}. Expected {expected}",
                heading_problems(columns).join("; "),
                found.join(", ")
            )
        }
    };
    CsvError::file(message)
}

/// Why a line could not be split into fields. It deliberately carries no text of the line,
/// which may hold a password.
#[derive(Debug, PartialEq, Eq)]
enum SplitError {
    /// The quote opening this field (1-based) is not closed on the line.
    Unclosed { field: usize },
    /// Something other than spaces follows the closing quote of this field (1-based).
    AfterQuote { field: usize },
}

impl SplitError {
    fn message(&self, layout: &Layout) -> String {
        match *self {
            SplitError::Unclosed { field } => format!(
                "the quote opening {} is not closed on this line (a quoted field cannot span lines)",
                layout.field_label(field)
            ),
            SplitError::AfterQuote { field } => format!(
                "text follows the closing quote of {}; inside quotes, write the quote character twice",
                layout.field_label(field)
            ),
        }
    }
}

/// One field of a line, and whether it was quoted.
#[derive(Debug, PartialEq, Eq)]
struct Field {
    value: String,
    quoted: bool,
}

/// Splits one physical line into fields by the quoting rules in the module documentation.
///
/// Quoted fields never span lines: credentials contain no line breaks, and line-at-a-time
/// splitting lets every error name the physical line it is on. A line break inside quotes
/// therefore shows up as [`SplitError::Unclosed`].
fn split_fields(line: &str, separator: char) -> Result<Vec<Field>, SplitError> {
    // TAB may be the separator, and then it is not padding.
    let blank = |c: &char| *c != separator && c.is_whitespace();
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let field = fields.len() + 1;
        while chars.next_if(blank).is_some() {}
        let value = match chars.peek() {
            Some(&quote @ ('"' | '\'')) => {
                chars.next();
                let mut value = String::new();
                loop {
                    match chars.next() {
                        None => return Err(SplitError::Unclosed { field }),
                        Some(c) if c == quote => {
                            if chars.next_if_eq(&quote).is_some() {
                                value.push(quote);
                            } else {
                                break;
                            }
                        }
                        Some(c) => value.push(c),
                    }
                }
                while chars.next_if(blank).is_some() {}
                if chars.peek().is_some_and(|&c| c != separator) {
                    return Err(SplitError::AfterQuote { field });
                }
                Field {
                    value,
                    quoted: true,
                }
            }
            _ => {
                let mut value = String::new();
                while let Some(c) = chars.next_if(|&c| c != separator) {
                    value.push(c);
                }
                Field {
                    value: value.trim().to_owned(),
                    quoted: false,
                }
            }
        };
        fields.push(value);
        // Either the separator, which starts another field, or the end of the line.
        if chars.next().is_none() {
            return Ok(fields);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An expected row: line, login, password, email, archive user.
    type Row = (
        usize,
        &'static str,
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
    );

    enum Want {
        Rows(&'static [Row]),
        /// Each error's line and a piece of its message, in order.
        Errors(&'static [(Option<usize>, &'static str)]),
    }

    struct Case {
        name: &'static str,
        input: &'static [u8],
        want: Want,
    }

    const CASES: &[Case] = &[
        Case {
            name: "minimal, semicolons",
            input: b"Login;Password\nalice;s3cret\n",
            want: Want::Rows(&[(2, "alice", "s3cret", None, None)]),
        },
        Case {
            name: "all columns, commas, any order, CRLF, no final newline",
            input: b"Email,IMAP user name,Archive user name,IMAP password\r\na@x.test,alice,arch,pw1\r\n,bob,,pw2",
            want: Want::Rows(&[
                (2, "alice", "pw1", Some("a@x.test"), Some("arch")),
                (3, "bob", "pw2", None, None),
            ]),
        },
        Case {
            name: "pipes and heading spellings",
            input: b"IMAP-Username|imap_pass|E-Mail|mailstore_username\nalice|pw|a@x.test|al\n",
            want: Want::Rows(&[(2, "alice", "pw", Some("a@x.test"), Some("al"))]),
        },
        Case {
            name: "tabs, and a space in a tab-separated value",
            input: b"User\tPass\n alice \t two words \n",
            want: Want::Rows(&[(2, "alice", "two words", None, None)]),
        },
        Case {
            name: "BOM, blank lines counted, lone CR at the end",
            input: b"\xEF\xBB\xBF\n  \nUsername;Password\n\n\t\nalice;pw\r",
            want: Want::Rows(&[(6, "alice", "pw", None, None)]),
        },
        Case {
            name: "quoted fields keep spaces, doubled quotes, separators and the other quote",
            input: b"Login;Password\n\"alice\";\" p;w \"\nbob ; 'it''s \"x\"'  \ncarol;\"say \"\"hi\"\"\"\n",
            want: Want::Rows(&[
                (2, "alice", " p;w ", None, None),
                (3, "bob", "it's \"x\"", None, None),
                (4, "carol", "say \"hi\"", None, None),
            ]),
        },
        Case {
            name: "a quote inside an unquoted password is text",
            input: b"Login,Password\n\"o'brien\",pa\"ss'\n",
            want: Want::Rows(&[(2, "o'brien", "pa\"ss'", None, None)]),
        },
        Case {
            name: "a quote inside an unquoted name or address is refused, without echoing it",
            input: b"Login\tEmail\tPassword\no'brien\tx@example.org\tpw\nbob\tb@example.org\";\xce\xb1\t|\"\n",
            want: Want::Errors(&[
                (Some(2), "the IMAP user name contains a quote character but is not quoted"),
                (Some(3), "the email address contains a quote character but is not quoted"),
            ]),
        },
        Case {
            name: "a quoted name that swallowed a separator is refused",
            input: b"Login,Password\n'a-2,\"\xce\xb1',x\n",
            want: Want::Errors(&[(Some(2), "the IMAP user name contains the separator")]),
        },
        Case {
            name: "quoted login and email are trimmed, empty optional fields are None",
            input: b"Login;Password;Email;Archive user\n\" alice \";pw;\" \";''\n",
            want: Want::Rows(&[(2, "alice", "pw", None, None)]),
        },
        Case {
            name: "quoted headings, comma inside a semicolon-separated file",
            input: b"\"Login\";\"Password\"\nalice;a,b\n",
            want: Want::Rows(&[(2, "alice", "a,b", None, None)]),
        },
        Case {
            name: "separator chosen by the headings, not by which character occurs",
            input: b"Login;Password;Mail, address\nalice;a,b;a@x.test\n",
            want: Want::Rows(&[(2, "alice", "a,b", Some("a@x.test"), None)]),
        },
        Case {
            name: "a heading line valid at no separator is described at its best split",
            input: b"Login|Password,x\n",
            want: Want::Errors(&[(
                None,
                "unknown heading in column 2; no IMAP password column. Found (split at '|'): 1 IMAP user name, 2 unknown",
            )]),
        },
        Case {
            name: "headings only",
            input: b"Login;Password\n\n",
            want: Want::Rows(&[]),
        },
        Case {
            name: "empty file",
            input: b" \r\n\n",
            want: Want::Errors(&[(None, "the file is empty")]),
        },
        Case {
            name: "not UTF-8",
            input: b"Login;Password\nalice;caf\xE9\n",
            want: Want::Errors(&[(None, "first invalid byte is on line 2")]),
        },
        Case {
            name: "UTF-16",
            input: b"\xFF\xFEL\x00",
            want: Want::Errors(&[(None, "UTF-16")]),
        },
        Case {
            name: "unknown heading and missing password column",
            input: b"Login;Passwort;Email\n",
            want: Want::Errors(&[(
                None,
                "unknown heading in column 2; no IMAP password column. Found (split at ';'): 1 IMAP user name, 2 unknown, 3 email address",
            )]),
        },
        Case {
            name: "two headings for one column",
            input: b"Login,User name,Password,Mail,Address\n",
            want: Want::Errors(&[(
                None,
                "IMAP user name named in columns 1 and 2; email address named in columns 4 and 5",
            )]),
        },
        Case {
            name: "missing login column, single heading",
            input: b"Password\n",
            want: Want::Errors(&[(None, "no IMAP user name column. Found (no separator): 1 IMAP password")]),
        },
        Case {
            name: "heading line missing",
            input: b"alice;hunter2\n",
            want: Want::Errors(&[(None, "is the heading line missing?")]),
        },
        Case {
            name: "unclosed quote in the heading line",
            input: b"\"Login;Password\n",
            want: Want::Errors(&[(None, "the heading line has a quote that is not closed")]),
        },
        Case {
            name: "every row error is listed with its line",
            input: b"Login;Password;Email\n\
                     alice;hunter2;a@x.test\n\
                     bob;\"hunter2;b@x.test\n\
                     bob;hunter2\n\
                     \n\
                     carol;hunter2;c@x;extra\n\
                     ;hunter2;\n\
                     dave;;d@x\n\
                     ALICE;hunter2;\n\
                     ;;\n\
                     erin;\"hunter2\"x;\n",
            want: Want::Errors(&[
                (Some(3), "the quote opening field 2 (IMAP password) is not closed on this line"),
                (Some(4), "expected 3 fields as in the heading line, found 2"),
                (Some(6), "expected 3 fields as in the heading line, found 4; quote a field that contains ';'"),
                (Some(7), "the IMAP user name is empty"),
                (Some(8), "the IMAP password is empty"),
                (Some(9), "the IMAP user name is already on line 2"),
                (Some(10), "the IMAP user name is empty"),
                (Some(10), "the IMAP password is empty"),
                (Some(11), "text follows the closing quote of field 2 (IMAP password)"),
            ]),
        },
        Case {
            name: "logins are named while no quote is left open",
            input: b"Login;Password\nalice;x\ndave;\nAlice;y\n",
            want: Want::Errors(&[
                (Some(3), "the IMAP password of \"dave\" is empty"),
                (Some(4), "the IMAP user name of \"Alice\" is already on line 2 (user names are compared ignoring case)"),
            ]),
        },
        Case {
            name: "a password with a line break does not leak through the next line's login",
            input: b"Login;Password\nalice;x\nbob;\"first half\nalice;second half\"\n",
            want: Want::Errors(&[
                (Some(3), "not closed on this line"),
                (Some(4), "the IMAP user name is already on line 2"),
            ]),
        },
        Case {
            name: "two rows archived into one place are refused, naming both lines",
            input: b"Login;Password;Email;Archive user
                     alice;x;shared@x.test;team
                     bob;y;SHARED@x.test;Team
                     carol;z;;team
                     team;w;;
                     dave;v;dave@x.test;
                     erin;u;;dave@x.test
",
            want: Want::Errors(&[(
                Some(3),
                "this mailbox would be archived into the same place (archive user \"Team\", mailbox \"SHARED@x.test\") as the one on line 2",
            )]),
        },
        Case {
            name: "a login is an archive place too, and not named after an open quote",
            input: b"Login;Password;Email;Archive user
                     bob;\"open
                     alice;x;;
                     other;y;alice;alice
",
            want: Want::Errors(&[
                (Some(2), "not closed on this line"),
                (Some(4), "this mailbox would be archived into the same place as the one on line 3"),
            ]),
        },
    ];

    #[test]
    fn table() {
        for case in CASES {
            let got = parse(case.input);
            match (&case.want, got) {
                (Want::Rows(want), Ok(rows)) => {
                    let want: Vec<CsvRow> = want
                        .iter()
                        .map(|&(line, login, password, email, archive_user)| CsvRow {
                            line,
                            login: login.into(),
                            password: password.into(),
                            email: email.map(Into::into),
                            archive_user: archive_user.map(Into::into),
                        })
                        .collect();
                    for (got, want) in rows.iter().zip(&want) {
                        assert_eq!(got.password, want.password, "{}", case.name);
                    }
                    assert_eq!(rows, want, "{}", case.name);
                }
                (Want::Errors(want), Err(errors)) => {
                    assert_eq!(errors.len(), want.len(), "{}: {errors:#?}", case.name);
                    for (error, (line, text)) in errors.iter().zip(want.iter()) {
                        assert_eq!(error.line, *line, "{}: {error}", case.name);
                        assert!(error.message.contains(text), "{}: {error}", case.name);
                        assert!(!error.message.contains("hunter2"), "{}: {error}", case.name);
                    }
                }
                (_, got) => panic!("{}: unexpected {got:?}", case.name),
            }
        }
    }

    #[test]
    fn accepts_the_headings_asked_for() {
        let spellings = [
            ("IMAP user name", Column::Login),
            ("IMAP-Username", Column::Login),
            ("imap_user", Column::Login),
            ("IMAP User", Column::Login),
            ("Username", Column::Login),
            ("User name", Column::Login),
            ("Login", Column::Login),
            ("IMAP login", Column::Login),
            ("IMAP password", Column::Password),
            ("Password", Column::Password),
            ("imap_pass", Column::Password),
            ("Pass", Column::Password),
            ("Email", Column::Email),
            ("E-Mail", Column::Email),
            ("Email Address", Column::Email),
            ("Mail", Column::Email),
            ("Address", Column::Email),
            ("Archive user name", Column::ArchiveUser),
            ("Archive User", Column::ArchiveUser),
            ("archive_user", Column::ArchiveUser),
            ("MailStore User", Column::ArchiveUser),
            ("MailStore user name", Column::ArchiveUser),
            ("mailstore_username", Column::ArchiveUser),
        ];
        for (heading, column) in spellings {
            assert!(Column::from_heading(heading) == Some(column), "{heading}");
        }
        assert!(Column::from_heading("Passwort").is_none());
        assert!(Column::from_heading("").is_none());
    }

    #[test]
    fn no_heading_spelling_names_two_columns() {
        for column in Column::ALL {
            for heading in column.headings() {
                assert!(Column::from_heading(heading) == Some(column), "{heading}");
            }
        }
    }

    #[test]
    fn two_valid_splits_are_an_error() {
        // Punctuation inside a heading is ignored, so ";" and "," both give two valid headings.
        let errors = parse(b"User;,Pass\nalice;,x\n").unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].line, None);
        assert!(
            errors[0]
                .message
                .contains("at ';' and at ','; use only one"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn debug_hides_the_password_and_display_shows_the_line() {
        let rows = parse(b"Login;Password\nalice;hunter2\n").unwrap();
        let debug = format!("{rows:?}");
        assert!(debug.contains("alice") && debug.contains("***"), "{debug}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert_eq!(CsvError::at(7, "bad").to_string(), "line 7: bad");
        assert_eq!(CsvError::file("bad").to_string(), "bad");
    }

    #[test]
    fn split_fields_reports_positions_only() {
        let fields = |line: &str, separator| {
            split_fields(line, separator).map(|f| {
                f.into_iter()
                    .map(|f| (f.value, f.quoted))
                    .collect::<Vec<_>>()
            })
        };
        let plain = |v: &str| (v.to_string(), false);
        let quoted = |v: &str| (v.to_string(), true);
        assert_eq!(
            fields("a, 'b' ,c", ','),
            Ok(vec![plain("a"), quoted("b"), plain("c")])
        );
        assert_eq!(fields(",", ','), Ok(vec![plain(""), plain("")]));
        assert_eq!(fields("a;'b", ';'), Err(SplitError::Unclosed { field: 2 }));
        assert_eq!(
            fields("'a' b;c", ';'),
            Err(SplitError::AfterQuote { field: 1 })
        );
        assert_eq!(
            fields("\t'a'\t", '\t'),
            Ok(vec![plain(""), quoted("a"), plain("")])
        );
    }

    /// Passwords are drawn from Greek letters (plus separators, quotes and spaces, to exercise
    /// quoting); nothing else generated contains Greek, so a Greek letter in an error message
    /// is a piece of a password.
    fn is_password_letter(c: char) -> bool {
        ('α'..='ω').contains(&c)
    }

    fn quote(value: &str, separator: char, force: bool, quote: char) -> String {
        let needed =
            value.contains(separator) || value.trim() != value || value.starts_with(['"', '\'']);
        if needed || force {
            let doubled = value.replace(quote, &format!("{quote}{quote}"));
            format!("{quote}{doubled}{quote}")
        } else {
            value.to_owned()
        }
    }

    #[derive(Debug, Clone)]
    struct Generated {
        /// The file's physical lines, without line ends.
        lines: Vec<String>,
        /// What `parse` must return for them.
        rows: Vec<CsvRow>,
    }

    fn spell(heading: &str, style: u8) -> String {
        match style % 4 {
            0 => heading.to_owned(),
            1 => heading.to_uppercase().replace(' ', "-"),
            2 => heading.to_lowercase().replace(' ', "_"),
            _ => heading.replace(' ', ""),
        }
    }

    prop_compose! {
        fn valid_file()(
            separator in prop::sample::select(SEPARATORS.to_vec()),
            optional in (any::<bool>(), any::<bool>()),
            order in Just(Column::ALL.to_vec()).prop_shuffle(),
            spellings in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 4),
            values in prop::collection::vec((
                "[a-z]{1,6}(@[a-z]{1,4}\\.test)?",
                "[α-ω;,|\t\"' ]{1,10}",
                "([a-z]{1,4}@[a-z]{1,4}\\.test)?",
                "([a-z]{1,6})?",
                any::<(bool, bool, bool)>(),
                prop::sample::select(vec!['"', '\'']),
                0..3usize,
            ), 0..8),
        ) -> Generated {
            let columns: Vec<Column> = order
                .into_iter()
                .filter(|c| match c {
                    Column::Email => optional.0,
                    Column::ArchiveUser => optional.1,
                    _ => true,
                })
                .collect();
            let headings: Vec<String> = columns
                .iter()
                .zip(&spellings)
                .map(|(column, (index, style))| spell(index.get::<&str>(column.headings()), *style))
                .collect();
            let mut lines = vec![headings.join(&separator.to_string())];
            let mut rows = Vec::new();
            for (i, (login, password, email, archive, force, quote_char, blanks)) in values.into_iter().enumerate() {
                // Unique logins, so that the file is valid.
                let login = format!("{login}-{i}");
                lines.extend(std::iter::repeat_n(" ".to_owned(), blanks));
                let fields: Vec<String> = columns
                    .iter()
                    .map(|column| match column {
                        Column::Login => quote(&login, separator, force.0, quote_char),
                        Column::Password => quote(&password, separator, force.1, quote_char),
                        Column::Email => quote(&email, separator, force.2, quote_char),
                        Column::ArchiveUser => quote(&archive, separator, false, quote_char),
                    })
                    .collect();
                lines.push(fields.join(&separator.to_string()));
                rows.push(CsvRow {
                    line: lines.len(),
                    login,
                    password,
                    email: columns.contains(&Column::Email).then_some(email).filter(|e| !e.is_empty()),
                    archive_user: columns.contains(&Column::ArchiveUser).then_some(archive).filter(|a| !a.is_empty()),
                });
            }
            Generated { lines, rows }
        }
    }

    fn join(lines: &[String], crlf: bool, bom: bool) -> Vec<u8> {
        let end = if crlf { "\r\n" } else { "\n" };
        let mut text = if bom {
            "\u{feff}".to_owned()
        } else {
            String::new()
        };
        for line in lines {
            text.push_str(line);
            text.push_str(end);
        }
        text.into_bytes()
    }

    /// Damage of the kind a hand-edited file suffers. Each line is damaged at most once:
    /// compound damage can move a piece of a password into the login column of a row that
    /// is otherwise sound, which no parser can tell apart from a real login.
    #[derive(Debug, Clone)]
    enum Damage {
        Delete(prop::sample::Index),
        Insert(prop::sample::Index, char),
        Truncate(prop::sample::Index),
        Duplicate,
        Remove,
    }

    fn damage() -> impl Strategy<Value = Damage> {
        prop_oneof![
            any::<prop::sample::Index>().prop_map(Damage::Delete),
            (
                any::<prop::sample::Index>(),
                prop::sample::select(vec![';', ',', '|', '\t', '"', '\'', '\n', ' ', 'x'])
            )
                .prop_map(|(at, c)| Damage::Insert(at, c)),
            any::<prop::sample::Index>().prop_map(Damage::Truncate),
            Just(Damage::Duplicate),
            Just(Damage::Remove),
        ]
    }

    fn apply(line: &str, damage: &Damage) -> Vec<String> {
        let chars: Vec<char> = line.chars().collect();
        let at = |index: &prop::sample::Index| index.index(chars.len() + 1);
        match damage {
            Damage::Delete(index) if !chars.is_empty() => {
                let at = index.index(chars.len());
                vec![chars[..at].iter().chain(&chars[at + 1..]).collect()]
            }
            Damage::Delete(_) => vec![line.to_owned()],
            Damage::Insert(index, c) => {
                let (head, tail) = chars.split_at(at(index));
                let line: String = head.iter().chain([c]).chain(tail).collect();
                line.split('\n').map(str::to_owned).collect()
            }
            Damage::Truncate(index) => vec![chars[..at(index)].iter().collect()],
            Damage::Duplicate => vec![line.to_owned(), line.to_owned()],
            Damage::Remove => Vec::new(),
        }
    }

    proptest! {
        #[test]
        fn valid_files_parse_back(file in valid_file(), crlf: bool, bom: bool) {
            prop_assert_eq!(parse(&join(&file.lines, crlf, bom)), Ok(file.rows));
        }

        #[test]
        fn damaged_files_never_leak_a_password(
            file in valid_file(),
            damages in prop::collection::vec((any::<prop::sample::Index>(), damage()), 1..5),
            crlf: bool,
        ) {
            let mut damaged: Vec<Option<Damage>> = vec![None; file.lines.len()];
            for (index, damage) in damages {
                damaged[index.index(file.lines.len())] = Some(damage);
            }
            let lines: Vec<String> = file
                .lines
                .iter()
                .zip(&damaged)
                .flat_map(|(line, damage)| match damage {
                    Some(damage) => apply(line, damage),
                    None => vec![line.clone()],
                })
                .collect();
            let line_count = lines.len();
            match parse(&join(&lines, crlf, false)) {
                Ok(rows) => {
                    let debug = format!("{rows:?}");
                    prop_assert!(!debug.chars().any(is_password_letter), "{}", debug);
                }
                Err(errors) => {
                    prop_assert!(!errors.is_empty());
                    for error in errors {
                        let text = error.to_string();
                        prop_assert!(!text.chars().any(is_password_letter), "{}", text);
                        prop_assert!(error.line.is_none_or(|line| (1..=line_count).contains(&line)), "{}", text);
                    }
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(input in prop::collection::vec(any::<u8>(), 0..300)) {
            if let Err(errors) = parse(&input) {
                prop_assert!(!errors.is_empty());
            }
        }

        #[test]
        fn csv_like_text_never_panics(
            heading in prop::sample::select(vec!["", "Login;Password\n", "User,Pass,Mail\r\n", "Login\tPassword\tArchive user\n"]),
            body in "[a-zé ;,|\t\"'\r\n]{0,200}",
        ) {
            if let Err(errors) = parse(format!("{heading}{body}").as_bytes()) {
                prop_assert!(!errors.is_empty());
            }
        }
    }
}
