//! Event handlers (`agent run --event-handler`): which events a handler runs for, and
//! the command it runs ([`HandlerSpec`]).

use std::fmt;
use std::str::FromStr;

use events::MemberEventKind;
use thiserror::Error;

/// Which events a handler runs for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Every event (`*`).
    Any,
    /// User events (`user`), or only those of one name (`user:NAME`).
    User(Option<String>),
    /// Member events of every kind (`member`), or of one kind (`member-join`, ...). Only
    /// Serf's five kinds are parsed: join, leave, failed, update, reap.
    Member(Option<MemberEventKind>),
    /// KV writes (`kv`).
    Kv,
    /// Health check changes (`health`).
    Health,
}

/// One `--event-handler`: which events, and the command to run.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HandlerSpec {
    types: Vec<EventType>,
    command: String,
}

/// An `--event-handler` that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SpecError {
    /// Nothing (or only blanks) to run.
    #[error("the command is empty")]
    EmptyCommand,
}

impl EventType {
    /// The member kinds handlers see, with their names.
    const MEMBER_KINDS: [MemberEventKind; 5] = [
        MemberEventKind::Join,
        MemberEventKind::Leave,
        MemberEventKind::Failed,
        MemberEventKind::Update,
        MemberEventKind::Reap,
    ];

    fn parse(text: &str) -> Option<EventType> {
        let text = text.trim();
        if let Some(name) = text.strip_prefix("user:") {
            return (!name.is_empty()).then(|| EventType::User(Some(name.to_string())));
        }
        match text {
            "*" => Some(EventType::Any),
            "user" => Some(EventType::User(None)),
            "member" => Some(EventType::Member(None)),
            "kv" => Some(EventType::Kv),
            "health" => Some(EventType::Health),
            _ => EventType::MEMBER_KINDS
                .into_iter()
                .find(|kind| kind.as_str() == text)
                .map(|kind| EventType::Member(Some(kind))),
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventType::Any => f.write_str("*"),
            EventType::User(None) => f.write_str("user"),
            EventType::User(Some(name)) => write!(f, "user:{name}"),
            EventType::Member(None) => f.write_str("member"),
            EventType::Member(Some(kind)) => f.write_str(kind.as_str()),
            EventType::Kv => f.write_str("kv"),
            EventType::Health => f.write_str("health"),
        }
    }
}

impl HandlerSpec {
    /// Parses `[TYPE[:NAME][,TYPE[:NAME]...]=]COMMAND`. Without an `=`, or when the part
    /// before the first `=` is not a list of known types (as in `FOO=1 cmd`), the whole
    /// text is the command and the handler runs for every event; so does a misspelt type
    /// (`member-jion=notify` runs `member-jion=notify` for every event).
    pub fn parse(text: &str) -> Result<HandlerSpec, SpecError> {
        let typed = text.split_once('=').and_then(|(types, command)| {
            let types: Option<Vec<EventType>> = types.split(',').map(EventType::parse).collect();
            types.map(|types| (types, command))
        });
        let (types, command) = typed.unwrap_or_else(|| (vec![EventType::Any], text));
        if command.trim().is_empty() {
            return Err(SpecError::EmptyCommand);
        }
        Ok(HandlerSpec {
            types,
            command: command.to_string(),
        })
    }

    /// The events it runs for (`[EventType::Any]` when none were named).
    pub fn types(&self) -> &[EventType] {
        &self.types
    }

    /// The command, run with `sh -c`.
    pub fn command(&self) -> &str {
        &self.command
    }
}

impl FromStr for HandlerSpec {
    type Err = SpecError;

    fn from_str(text: &str) -> Result<HandlerSpec, SpecError> {
        HandlerSpec::parse(text)
    }
}

impl fmt::Display for HandlerSpec {
    /// `TYPE,TYPE=COMMAND`, which parses back to the same spec.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, t) in self.types.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{t}")?;
        }
        write!(f, "={}", self.command)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> HandlerSpec {
        text.parse().unwrap()
    }

    fn types(text: &str) -> Vec<EventType> {
        spec(text).types().to_vec()
    }

    #[test]
    fn a_spec_names_types_and_a_command() {
        let s = spec("user:deploy=/usr/local/bin/deploy --now");
        assert_eq!(s.types(), [EventType::User(Some("deploy".into()))]);
        assert_eq!(s.command(), "/usr/local/bin/deploy --now");

        assert_eq!(types("user=x"), [EventType::User(None)]);
        assert_eq!(types("member=x"), [EventType::Member(None)]);
        assert_eq!(types("kv=x"), [EventType::Kv]);
        assert_eq!(types("health=x"), [EventType::Health]);
        assert_eq!(types("*=x"), [EventType::Any]);
        for (text, kind) in [
            ("member-join", MemberEventKind::Join),
            ("member-leave", MemberEventKind::Leave),
            ("member-failed", MemberEventKind::Failed),
            ("member-update", MemberEventKind::Update),
            ("member-reap", MemberEventKind::Reap),
        ] {
            assert_eq!(types(&format!("{text}=x")), [EventType::Member(Some(kind))]);
        }
        assert_eq!(
            types("member-join, member-leave,user:a:b=notify"),
            [
                EventType::Member(Some(MemberEventKind::Join)),
                EventType::Member(Some(MemberEventKind::Leave)),
                EventType::User(Some("a:b".into())),
            ]
        );
        // Only the first `=` separates.
        assert_eq!(spec("kv=env X=1 cmd").command(), "env X=1 cmd");
    }

    #[test]
    fn without_known_types_the_whole_text_is_the_command() {
        for text in [
            "/usr/local/bin/handle",
            "FOO=1 cmd",
            "user,FOO=1 cmd",
            "member-suspect=cmd",
            "user:=cmd",
            "=cmd",
            "echo a=b",
        ] {
            let s = spec(text);
            assert_eq!(s.types(), [EventType::Any], "{text}");
            assert_eq!(s.command(), text);
        }
    }

    #[test]
    fn an_empty_command_is_refused() {
        for text in ["", "  ", "user=", "kv,health= ", "user:deploy="] {
            assert_eq!(
                text.parse::<HandlerSpec>(),
                Err(SpecError::EmptyCommand),
                "{text:?}"
            );
        }
    }

    #[test]
    fn a_spec_displays_as_it_parses() {
        for text in ["user:deploy,member=run it", "FOO=1 cmd", "kv=a=b"] {
            let s = spec(text);
            assert_eq!(spec(&s.to_string()), s, "{text}");
        }
        assert_eq!(spec("member-failed,kv=x").to_string(), "member-failed,kv=x");
    }
}
