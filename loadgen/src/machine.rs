//! What machine the load generator ran on, for the report: logical CPU count and CPU model (from
//! `/proc/cpuinfo` on Linux; "unknown" elsewhere). Figures without the machine are not comparable.

/// The client machine of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineInfo {
    pub cpus: usize,
    pub model: String,
}

impl MachineInfo {
    /// Reads the running machine.
    pub fn detect() -> MachineInfo {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| cpu_model(&text))
            .unwrap_or_else(|| "unknown".to_string());
        MachineInfo { cpus, model }
    }
}

/// The first `model name` of a `/proc/cpuinfo` text.
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t50_model_comes_from_cpuinfo() {
        // Proves the model line is found among other keys, and absence gives None.
        let text = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t: avx2\n";
        assert_eq!(cpu_model(text).as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(cpu_model("processor : 0\n"), None);
        assert!(MachineInfo::detect().cpus >= 1);
    }
}
