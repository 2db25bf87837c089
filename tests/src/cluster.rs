//! A cluster of real `ledger-server` processes on one machine for the cluster tests: ports chosen
//! up front (by [`crate::ports`], outside the kernel's ephemeral range) so that every node can be given the full
//! `--peers` list, all nodes started together (a coordinated bootstrap waits for all of them),
//! and each node killed (`kill -9`) or restarted with exactly its first command.

use crate::ServerProcess;
use std::path::PathBuf;

/// One node's fixed command line and its process while it runs.
pub struct Node {
    pub addr: String,
    /// Its metrics endpoint, when the cluster was started with them (`start_with_metrics`).
    pub metrics_addr: Option<String>,
    pub data_dir: PathBuf,
    pub process: Option<ServerProcess>,
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    extra: Vec<String>,
    _dir: tempfile::TempDir,
}

pub use crate::ports::free_addr;

impl Cluster {
    /// Starts `n` nodes with `--bootstrap-expect n` and returns once all listen. `extra` flags go
    /// to every node (and to every restart).
    pub fn start(n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_inner(n, extra, false)
    }

    /// [`Cluster::start`] with a metrics endpoint per node (`Node::metrics_addr`).
    pub fn start_with_metrics(n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_inner(n, extra, true)
    }

    fn start_inner(n: usize, extra: &[&str], metrics: bool) -> Cluster {
        let dir = crate::temp_dir("cluster");
        let addrs: Vec<String> = (0..n).map(|_| free_addr()).collect();
        let peers = addrs.join(",");
        let expect = n.to_string();
        let mut common: Vec<String> = vec![
            "--bootstrap-expect".into(),
            expect,
            "--peers".into(),
            peers,
            "--bootstrap-poll-secs".into(),
            "1".into(),
        ];
        common.extend(extra.iter().map(|s| s.to_string()));
        let nodes: Vec<Node> = addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| Node {
                addr: addr.clone(),
                metrics_addr: metrics.then(free_addr),
                data_dir: dir.path().join(format!("n{i}")),
                process: None,
            })
            .collect();
        let mut cluster = Cluster { nodes, extra: common, _dir: dir };
        let all: Vec<usize> = (0..n).collect();
        cluster.start_nodes(&all);
        cluster
    }

    /// Starts the given (stopped) nodes concurrently and waits until each listens.
    pub fn start_nodes(&mut self, which: &[usize]) {
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let started: Vec<(usize, ServerProcess)> = std::thread::scope(|scope| {
            let handles: Vec<_> = which
                .iter()
                .map(|&i| {
                    let node = &self.nodes[i];
                    let (dir, addr, mut extra) = (node.data_dir.clone(), node.addr.clone(), extra.clone());
                    if let Some(m) = &node.metrics_addr {
                        extra.extend(["--metrics-addr", m.as_str()]);
                    }
                    scope.spawn(move || (i, ServerProcess::start_on(&dir, &addr, &extra)))
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("node start")).collect()
        });
        for (i, process) in started {
            self.nodes[i].process = Some(process);
        }
    }

    pub fn addr(&self, i: usize) -> &str {
        &self.nodes[i].addr
    }

    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    /// Starts one more node in join mode (`--bootstrap-expect 0 --peers` = every node so far); it
    /// hosts the cluster's groups once a member adds it (`ledger-admin join`). Returns its index.
    pub fn start_joining(&mut self, extra: &[&str]) -> usize {
        let peers = self.addrs().join(",");
        self.start_joining_via(Some(&peers), extra)
    }

    /// [`Cluster::start_joining`] with `--peers` = `peers`, or none (the node then finds the
    /// cluster through discovery's other sources, which `extra` names).
    pub fn start_joining_via(&mut self, peers: Option<&str>, extra: &[&str]) -> usize {
        let i = self.nodes.len();
        let addr = free_addr();
        let data_dir = self._dir.path().join(format!("n{i}"));
        let mut flags: Vec<&str> = vec!["--bootstrap-expect", "0", "--bootstrap-poll-secs", "1"];
        if let Some(peers) = peers {
            flags.extend(["--peers", peers]);
        }
        flags.extend_from_slice(extra);
        let process = ServerProcess::start_on(&data_dir, &addr, &flags);
        self.nodes.push(Node { addr, metrics_addr: None, data_dir, process: Some(process) });
        i
    }

    /// `kill -9` of node `i`.
    pub fn kill9(&mut self, i: usize) {
        if let Some(p) = self.nodes[i].process.take() {
            p.kill9();
        }
    }

    /// SIGTERM to node `i`, waiting for its exit; returns the exit code.
    pub fn stop(&mut self, i: usize) -> Option<i32> {
        self.nodes[i].process.take().and_then(|p| p.stop())
    }

    /// Sets `flag`'s value in every later start of every node (the flag must be in the command).
    pub fn set_flag(&mut self, flag: &str, value: &str) {
        let at = self.extra.iter().position(|f| f == flag).unwrap_or_else(|| panic!("{flag} is not set"));
        self.extra[at + 1] = value.to_string();
    }

    /// SIGUSR2 to the given nodes, as close together as the loop sends them: on a simulated disk
    /// (`--test-sim-disk`, D89) each cuts its own power, writes its durable image to the real
    /// files and exits. Waits for every exit; returns the exit codes.
    pub fn cut_power(&mut self, which: &[usize]) -> Vec<Option<i32>> {
        self.signal_together(which, libc::SIGUSR2)
    }

    /// `kill -9` of the given nodes, the signals sent before any exit is awaited.
    pub fn kill9_together(&mut self, which: &[usize]) {
        self.signal_together(which, libc::SIGKILL);
    }

    fn signal_together(&mut self, which: &[usize], signal: libc::c_int) -> Vec<Option<i32>> {
        for &i in which {
            if let Some(p) = &self.nodes[i].process {
                // SAFETY: sending a signal to our own child process by PID.
                unsafe {
                    libc::kill(p.pid(), signal);
                }
            }
        }
        which.iter().map(|&i| self.nodes[i].process.take().and_then(|p| p.wait_exit())).collect()
    }

    /// Restarts node `i` with its first command.
    pub fn restart(&mut self, i: usize) {
        self.start_nodes(&[i]);
    }

    /// The stderr of node `i` so far (for failure messages).
    pub fn stderr(&self, i: usize) -> String {
        let path = self.nodes[i].data_dir.with_extension("stderr.log");
        std::fs::read_to_string(path).unwrap_or_default()
    }
}
