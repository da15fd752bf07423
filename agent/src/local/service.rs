//! Services defined on this host and the limits their definitions keep.
//!
//! Services come from the `services` of config files and from the HTTP API. User events
//! use them for their service and tag filters; the catalog (servers) learns them from
//! each agent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Longest service name or id, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// Most tags on one service.
pub const MAX_TAGS: usize = 64;
/// Longest tag, in bytes.
pub const MAX_TAG_LEN: usize = 256;
/// Most meta pairs on one service.
pub const MAX_META_PAIRS: usize = 64;
/// Longest meta key, in bytes.
pub const MAX_META_KEY_LEN: usize = 128;
/// Longest meta value, in bytes.
pub const MAX_META_VALUE_LEN: usize = 512;

/// A service running on this host, as a config file or the HTTP API defines it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceDefinition {
    /// Unique on this agent; the name when not given.
    #[serde(rename = "ID")]
    pub id: String,
    /// The service's name, shared by its instances.
    pub service: String,
    /// Tags of this instance.
    pub tags: Vec<String>,
    /// Address of this instance; the node's address when empty.
    pub address: String,
    /// Port of this instance.
    pub port: u16,
    /// Free-form metadata.
    pub meta: BTreeMap<String, String>,
}

/// Why a service definition cannot be used.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum InvalidService {
    /// A name or id that is empty.
    #[error("the {0} must not be empty")]
    Empty(&'static str),
    /// A value longer than its limit.
    #[error("{what} is {len} bytes long, more than {max}")]
    TooLong {
        /// Which value (`name`, `tag 3`, ...).
        what: String,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A name or id that cannot be written in a URL path or on a command line.
    #[error("the {what} {value:?} holds a control character, white space or '/'")]
    BadCharacter {
        /// `name` or `id`.
        what: &'static str,
        /// The value.
        value: String,
    },
    /// A meta key outside Consul's alphabet.
    #[error("meta key {0:?} may hold only letters, digits, '-' and '_'")]
    MetaKey(String),
    /// More items than allowed.
    #[error("{count} {what}, more than {max}")]
    TooMany {
        /// `tags` or `meta pairs`.
        what: &'static str,
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
}

impl ServiceDefinition {
    /// The name and tags, as an event filter wants them.
    pub fn name_and_tags(&self) -> (&str, &[String]) {
        (&self.service, &self.tags)
    }

    /// Checks the limits a definition must keep: a name and id that are non-empty, at
    /// most [`MAX_NAME_LEN`] bytes and usable in a URL path; at most [`MAX_TAGS`] tags of
    /// at most [`MAX_TAG_LEN`] bytes; at most [`MAX_META_PAIRS`] meta pairs whose keys
    /// are letters, digits, `-` and `_` (as in Consul).
    pub fn check(&self) -> Result<(), InvalidService> {
        check_name("name", &self.service)?;
        check_name("id", &self.id)?;
        if self.tags.len() > MAX_TAGS {
            return Err(InvalidService::TooMany {
                what: "tags",
                count: self.tags.len(),
                max: MAX_TAGS,
            });
        }
        for (i, tag) in self.tags.iter().enumerate() {
            check_len(|| format!("tag {}", i + 1), tag, MAX_TAG_LEN)?;
        }
        if self.meta.len() > MAX_META_PAIRS {
            return Err(InvalidService::TooMany {
                what: "meta pairs",
                count: self.meta.len(),
                max: MAX_META_PAIRS,
            });
        }
        for (key, value) in &self.meta {
            if key.is_empty()
                || !key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(InvalidService::MetaKey(key.clone()));
            }
            check_len(|| format!("meta key {key:?}"), key, MAX_META_KEY_LEN)?;
            check_len(
                || format!("the value of meta key {key:?}"),
                value,
                MAX_META_VALUE_LEN,
            )?;
        }
        Ok(())
    }
}

fn check_name(what: &'static str, value: &str) -> Result<(), InvalidService> {
    if value.is_empty() {
        return Err(InvalidService::Empty(what));
    }
    check_len(|| what.to_string(), value, MAX_NAME_LEN)?;
    if value
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '/')
    {
        return Err(InvalidService::BadCharacter {
            what,
            value: value.to_string(),
        });
    }
    Ok(())
}

fn check_len(what: impl FnOnce() -> String, value: &str, max: usize) -> Result<(), InvalidService> {
    if value.len() > max {
        return Err(InvalidService::TooLong {
            what: what(),
            len: value.len(),
            max,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web() -> ServiceDefinition {
        ServiceDefinition {
            id: "web-1".into(),
            service: "web".into(),
            tags: vec!["v1".into()],
            port: 80,
            meta: [("version".to_string(), "1.2".to_string())].into(),
            ..ServiceDefinition::default()
        }
    }

    #[test]
    fn a_plain_definition_passes() {
        assert_eq!(web().check(), Ok(()));
        let mut unicode = web();
        unicode.service = "café.api_v2".into();
        assert_eq!(unicode.check(), Ok(()));
    }

    #[test]
    fn names_and_ids_must_be_usable() {
        let mut service = web();
        service.service = String::new();
        assert_eq!(service.check(), Err(InvalidService::Empty("name")));
        let mut service = web();
        service.id = String::new();
        assert_eq!(service.check(), Err(InvalidService::Empty("id")));
        for bad in ["has space", "tab\there", "nl\n", "a/b", "bell\u{7}"] {
            let mut service = web();
            service.service = bad.into();
            assert!(
                matches!(
                    service.check(),
                    Err(InvalidService::BadCharacter { what: "name", .. })
                ),
                "{bad:?} accepted"
            );
        }
        let mut service = web();
        service.service = "x".repeat(MAX_NAME_LEN);
        assert_eq!(service.check(), Ok(()));
        service.service.push('x');
        assert!(matches!(
            service.check(),
            Err(InvalidService::TooLong { len: 129, .. })
        ));
    }

    #[test]
    fn tags_are_limited_in_number_and_length() {
        let mut service = web();
        service.tags = vec!["t".into(); MAX_TAGS];
        assert_eq!(service.check(), Ok(()));
        service.tags.push("t".into());
        assert!(matches!(
            service.check(),
            Err(InvalidService::TooMany { what: "tags", .. })
        ));
        let mut service = web();
        service.tags = vec!["ok".into(), "x".repeat(MAX_TAG_LEN + 1)];
        assert_eq!(
            service.check(),
            Err(InvalidService::TooLong {
                what: "tag 2".into(),
                len: MAX_TAG_LEN + 1,
                max: MAX_TAG_LEN
            })
        );
    }

    #[test]
    fn meta_is_limited_like_consuls() {
        let mut service = web();
        service.meta = (0..MAX_META_PAIRS)
            .map(|i| (format!("k{i}"), "v".to_string()))
            .collect();
        assert_eq!(service.check(), Ok(()));
        service.meta.insert("one-more".into(), "v".into());
        assert!(matches!(
            service.check(),
            Err(InvalidService::TooMany {
                what: "meta pairs",
                ..
            })
        ));
        for bad in ["", "dotted.key", "sp ace"] {
            let mut service = web();
            service.meta = [(bad.to_string(), "v".to_string())].into();
            assert_eq!(service.check(), Err(InvalidService::MetaKey(bad.into())));
        }
        let mut service = web();
        service.meta = [("k".to_string(), "v".repeat(MAX_META_VALUE_LEN + 1))].into();
        assert!(matches!(
            service.check(),
            Err(InvalidService::TooLong { .. })
        ));
    }
}
