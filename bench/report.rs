//! The harness's output: a table per scenario on stdout at the end, and one
//! JSON line per result as results come (lines starting with `{`).

use serde_json::{json, Value};

use crate::procfs::{fs_type, meminfo_kib, read_trim};
use crate::Opts;

/// Collects table rows per section and prints JSON lines as results come.
pub(crate) struct Report {
    smoke: bool,
    sections: Vec<Section>,
}

pub(crate) struct Section {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    notes: Vec<String>,
}

impl Report {
    pub(crate) fn new(smoke: bool) -> Report {
        Report {
            smoke,
            sections: Vec::new(),
        }
    }

    pub(crate) fn json(&self, mut v: Value) {
        if self.smoke {
            v["smoke"] = json!(true);
        }
        println!("{v}");
    }

    pub(crate) fn section(&mut self, title: &str, header: &[&str]) {
        self.sections.push(Section {
            title: title.to_owned(),
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        });
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.sections.last_mut().expect("section").rows.push(cells);
    }

    pub(crate) fn note(&mut self, text: String) {
        self.sections.last_mut().expect("section").notes.push(text);
    }

    pub(crate) fn machine(&mut self, opts: &Opts) {
        let tmp = std::env::temp_dir();
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0);
        let kernel = read_trim("/proc/sys/kernel/osrelease");
        let model = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
            })
            .unwrap_or_default();
        let mem_kib = meminfo_kib("MemTotal");
        let fs = fs_type(&tmp);
        let release = opts.bin.components().any(|c| c.as_os_str() == "release");
        eprintln!(
            "harness: {cpus} cpus ({model}), {} MiB RAM, kernel {kernel}, temp dir {} on {fs}, binary {}",
            mem_kib / 1024,
            tmp.display(),
            opts.bin.display()
        );
        if !release && !self.smoke {
            eprintln!(
                "harness: WARNING: {} is not a release build",
                opts.bin.display()
            );
        }
        self.json(json!({
            "scenario": "machine",
            "cpus": cpus,
            "cpu_model": model,
            "mem_total_mib": mem_kib / 1024,
            "kernel": kernel,
            "temp_dir": tmp.display().to_string(),
            "temp_fs": fs,
            "binary": opts.bin.display().to_string(),
            "release_binary": release,
            "reps": opts.reps,
            "secs_per_run": opts.secs,
        }));
    }

    pub(crate) fn print_table(&self) {
        println!();
        if self.smoke {
            println!("(smoke run: tiny parameters, these are not measurements)");
        }
        for Section {
            title,
            header,
            rows,
            notes,
        } in &self.sections
        {
            println!("== {title}");
            let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
            for r in rows {
                for (i, c) in r.iter().enumerate() {
                    w[i] = w[i].max(c.len());
                }
            }
            let line = |cells: &[String]| {
                let s: Vec<String> = cells
                    .iter()
                    .enumerate()
                    .map(|(i, c)| format!("{c:>width$}", width = w[i]))
                    .collect();
                println!("  {}", s.join("  "));
            };
            line(header);
            for r in rows {
                line(r);
            }
            for n in notes {
                println!("  {n}");
            }
            println!();
        }
    }
}
