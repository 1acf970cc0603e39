//! Planted defects for the simulation to find (the `planted-bugs` feature). Without the
//! feature [`is`] is always false and the defects are compiled out.

/// A defect the simulation must catch within 1,000 seeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlantedBug {
    /// Answer an operator's ticket before its batch is durable.
    AnswerBeforeCommit,
    /// Append a received envelope whose `prev` does not match the stream.
    SkipPrevCheck,
    /// Forget held envelopes when recovering from the store.
    ForgetHeldAtRestart,
    /// Propose a checkpoint naming our stream one envelope short, without the witness rule.
    SmallerCheckpoint,
    /// Sign a charter whose terms are below our floors (issue 12 item 9).
    SignBelowFloors,
}

impl PlantedBug {
    pub const ALL: [PlantedBug; 5] = [
        PlantedBug::AnswerBeforeCommit,
        PlantedBug::SkipPrevCheck,
        PlantedBug::ForgetHeldAtRestart,
        PlantedBug::SmallerCheckpoint,
        PlantedBug::SignBelowFloors,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PlantedBug::AnswerBeforeCommit => "answer-before-commit",
            PlantedBug::SkipPrevCheck => "skip-prev-check",
            PlantedBug::ForgetHeldAtRestart => "forget-held-at-restart",
            PlantedBug::SmallerCheckpoint => "smaller-checkpoint",
            PlantedBug::SignBelowFloors => "sign-below-floors",
        }
    }

    pub fn parse(text: &str) -> Option<PlantedBug> {
        PlantedBug::ALL.into_iter().find(|b| b.name() == text)
    }
}

/// Whether this build can plant defects at all.
pub const PLANTED_BUGS_COMPILED: bool = cfg!(feature = "planted-bugs");

/// The defect a core runs with: none unless the feature is on.
pub(crate) fn active(bug: Option<PlantedBug>) -> Option<PlantedBug> {
    if PLANTED_BUGS_COMPILED {
        bug
    } else {
        None
    }
}

/// Whether `bug` is the active defect.
#[inline]
pub(crate) fn is(active: Option<PlantedBug>, bug: PlantedBug) -> bool {
    PLANTED_BUGS_COMPILED && active == Some(bug)
}
