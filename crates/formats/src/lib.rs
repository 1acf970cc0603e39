//! Structured notifications: the format catalogue as data, validation of field values, and
//! rendering in the reader's language and time zone.
//!
//! **No I/O beyond reading the data embedded at build time**: the formats (`formats/*.toml`)
//! and the Fluent locales (`locales/LANG/*.ftl`) are compiled in with `include_str!`, so
//! every node built from the same source holds byte-identical definitions (and digests).
//! Callers pass `now`, the reader's language and time zone, and the channel glossary.
//!
//! Fluent keys, per format `ID` and field `KEY`: `ID-title`, `ID-KEY` (label), `ID-KEY-help`,
//! and `ID-KEY-VALUE` for each enum value. Shared words are in `locales/LANG/common.ftl`.

#![forbid(unsafe_code)]

pub mod def;
pub mod render;
pub mod validate;
pub mod value;

use std::sync::OnceLock;

pub use def::{DefinitionError, FieldDef, FieldType, FormatDef, Rule};
pub use render::{
    check_zone, describe, locale_for, zone_name, zone_names, FieldDescription, FormatDescription,
    GlossaryEntry, Reader, Rendered, RenderedField, ZoneError, ZONE_NAME_BYTES_MAX,
};
pub use validate::{FieldError, Notification, Raw, Value};

/// The locales shipped, the first being the fallback.
pub const LOCALES: [&str; 2] = ["en", "zh-CN"];

/// One built-in format's embedded files: id, TOML, then Fluent per locale in [`LOCALES`] order.
type Embedded = (&'static str, &'static str, [&'static str; 2]);

macro_rules! embedded {
    ($($id:literal),* $(,)?) => {
        &[$((
            $id,
            include_str!(concat!("../formats/", $id, ".toml")),
            [
                include_str!(concat!("../locales/en/", $id, ".ftl")),
                include_str!(concat!("../locales/zh-CN/", $id, ".ftl")),
            ],
        )),*]
    };
}

const BUILTIN: &[Embedded] = embedded!(
    "launch",
    "space-launch",
    "cyber-incident",
    "encounter",
    "exercise",
    "nuclear-incident",
    "dialogue-request",
    "dialogue-reply",
    "text",
);

/// Shared Fluent messages per locale, in [`LOCALES`] order.
const COMMON: [&str; 2] = [
    include_str!("../locales/en/common.ftl"),
    include_str!("../locales/zh-CN/common.ftl"),
];

/// A format as the charter names it: id, version and the digest of its definition.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HeldFormat {
    pub id: String,
    pub version: u32,
    pub digest: [u8; 32],
}

/// A set of format definitions.
#[derive(Debug)]
pub struct Catalogue {
    formats: Vec<FormatDef>,
}

impl Catalogue {
    /// Every format, in catalogue order.
    pub fn formats(&self) -> &[FormatDef] {
        &self.formats
    }

    pub fn get(&self, id: &str, version: u32) -> Option<&FormatDef> {
        self.formats
            .iter()
            .find(|f| f.id == id && f.version == version)
    }

    /// The highest version of `id`.
    pub fn latest(&self, id: &str) -> Option<&FormatDef> {
        self.formats
            .iter()
            .filter(|f| f.id == id)
            .max_by_key(|f| f.version)
    }

    /// What this catalogue holds, for the charter.
    pub fn held(&self) -> Vec<HeldFormat> {
        self.formats
            .iter()
            .map(|f| HeldFormat {
                id: f.id.clone(),
                version: f.version,
                digest: f.digest,
            })
            .collect()
    }
}

/// The built-in catalogue (parsed once; the embedded data is checked by the tests, so a
/// bad definition fails the build's tests rather than a node).
pub fn builtin() -> &'static Catalogue {
    static CATALOGUE: OnceLock<Catalogue> = OnceLock::new();
    CATALOGUE.get_or_init(|| {
        let formats = BUILTIN
            .iter()
            .map(|(id, toml, ftl)| {
                let locales: Vec<(&str, &str)> =
                    LOCALES.iter().copied().zip(ftl.iter().copied()).collect();
                def::parse(&format!("{id}.toml"), toml, &locales)
                    .expect("built-in format definitions are checked by the tests")
            })
            .collect();
        Catalogue { formats }
    })
}

/// The built-in formats as the charter lists them.
pub fn builtin_held() -> Vec<HeldFormat> {
    builtin().held()
}

/// Fluent sources for one locale (index into [`LOCALES`]): common, then one per format.
pub(crate) fn locale_sources(index: usize) -> Vec<&'static str> {
    let mut sources = vec![COMMON[index]];
    sources.extend(BUILTIN.iter().map(|(_, _, ftl)| ftl[index]));
    sources
}
