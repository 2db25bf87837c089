//! The operation mix (`--mix read=90,write=10,verified=0,list=0`): integer weights per operation
//! kind, and the weighted choice the workload generator makes with them. Kinds left out of the flag
//! weigh 0.

use crate::error::ArgError;
use std::fmt;

/// The kinds of operation the load generator issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OpKind {
    /// `Read` of one key.
    Read,
    /// `Write` of `--batch-items` `SetEntity` operations in one transaction.
    Write,
    /// `VerifiedRead` of one key (state proof included).
    Verified,
    /// `ListEntities`, one page of up to `LIST_LIMIT` entities under a key prefix.
    List,
}

impl OpKind {
    /// Every kind, in report order.
    pub const ALL: [OpKind; 4] = [OpKind::Read, OpKind::Write, OpKind::Verified, OpKind::List];

    /// The name used in `--mix` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Write => "write",
            OpKind::Verified => "verified",
            OpKind::List => "list",
        }
    }

    fn index(self) -> usize {
        match self {
            OpKind::Read => 0,
            OpKind::Write => 1,
            OpKind::Verified => 2,
            OpKind::List => 3,
        }
    }

    fn from_name(name: &str) -> Option<OpKind> {
        OpKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Integer weights per kind; their sum is positive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    weights: [u32; 4],
}

impl Mix {
    /// Parses `read=90,write=10`; names may appear at most once, whitespace around items is ignored.
    pub fn parse(input: &str) -> Result<Mix, ArgError> {
        if input.trim().is_empty() {
            return Err(ArgError::MixEmpty);
        }
        let mut weights = [0u32; 4];
        let mut seen = [false; 4];
        for entry in input.split(',') {
            let entry = entry.trim();
            let Some((name, weight)) = entry.split_once('=') else {
                return Err(ArgError::MixEntry { entry: entry.to_string() });
            };
            let (name, weight) = (name.trim(), weight.trim());
            let kind =
                OpKind::from_name(name).ok_or_else(|| ArgError::MixUnknownOp { name: name.to_string() })?;
            if seen[kind.index()] {
                return Err(ArgError::MixDuplicate { name: name.to_string() });
            }
            seen[kind.index()] = true;
            weights[kind.index()] = weight
                .parse()
                .map_err(|_| ArgError::MixWeight { name: name.to_string(), weight: weight.to_string() })?;
        }
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        if total == 0 {
            return Err(ArgError::MixAllZero);
        }
        Ok(Mix { weights })
    }

    /// The weight of `kind`.
    pub fn weight(&self, kind: OpKind) -> u32 {
        self.weights[kind.index()]
    }

    /// Sum of all weights (positive).
    pub fn total(&self) -> u64 {
        self.weights.iter().map(|&w| u64::from(w)).sum()
    }

    /// Kinds with a positive weight, in report order.
    pub fn active(&self) -> impl Iterator<Item = OpKind> + '_ {
        OpKind::ALL.into_iter().filter(|k| self.weight(*k) > 0)
    }

    /// Maps `roll` (uniform in `0..total()`) to a kind: kinds own consecutive ranges of rolls.
    pub fn pick(&self, roll: u64) -> OpKind {
        assert!(roll < self.total(), "mix roll {roll} out of range");
        let mut upper = 0u64;
        for kind in OpKind::ALL {
            upper += u64::from(self.weight(kind));
            if roll < upper {
                return kind;
            }
        }
        unreachable!("roll below total always lands in a range")
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> =
            OpKind::ALL.iter().map(|k| format!("{}={}", k.name(), self.weight(*k))).collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn t10_mix_parses_and_defaults_missing_kinds_to_zero() {
        // Proves the SPEC example parses, omitted kinds weigh 0, and Display round-trips.
        let mix = Mix::parse("read=90,write=10,verified=0,list=0").unwrap();
        assert_eq!(mix.weight(OpKind::Read), 90);
        assert_eq!(mix.weight(OpKind::Write), 10);
        assert_eq!(mix.total(), 100);
        assert_eq!(mix.active().collect::<Vec<_>>(), vec![OpKind::Read, OpKind::Write]);
        let short = Mix::parse(" write = 3 , list=1").unwrap();
        assert_eq!(short.weight(OpKind::Read), 0);
        assert_eq!(short.weight(OpKind::List), 1);
        assert_eq!(Mix::parse(&mix.to_string()).unwrap(), mix);
    }

    #[test]
    fn t11_bad_mixes_are_rejected() {
        // Proves each class of malformed mix yields its own error with the offending text.
        assert_eq!(Mix::parse(""), Err(ArgError::MixEmpty));
        assert!(matches!(Mix::parse("read"), Err(ArgError::MixEntry { .. })));
        assert_eq!(Mix::parse("scan=5"), Err(ArgError::MixUnknownOp { name: "scan".into() }));
        assert_eq!(Mix::parse("read=1,read=2"), Err(ArgError::MixDuplicate { name: "read".into() }));
        assert!(matches!(Mix::parse("read=-1"), Err(ArgError::MixWeight { .. })));
        assert!(matches!(Mix::parse("read=1.5"), Err(ArgError::MixWeight { .. })));
        assert_eq!(Mix::parse("read=0,write=0"), Err(ArgError::MixAllZero));
        assert!(Mix::parse("scan=5").unwrap_err().to_string().contains("read, write, verified or list"));
    }

    #[test]
    fn t12_pick_honours_weights_exactly() {
        // Proves pick partitions 0..total into ranges sized by the weights, in kind order.
        let mix = Mix::parse("read=2,write=1,list=3").unwrap();
        let picks: Vec<OpKind> = (0..mix.total()).map(|r| mix.pick(r)).collect();
        use OpKind::*;
        assert_eq!(picks, vec![Read, Read, Write, List, List, List]);
    }
}
