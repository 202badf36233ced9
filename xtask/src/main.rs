//! Developer tasks. `cargo xtask ci` runs `.ci/run`, the one definition of what CI checks, so a green local run
//! means a green CI run. `cargo xtask fuzz` runs every fuzz target for a while on a copy of its seed corpus.

#[cfg(test)]
mod tidy;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

const USAGE: &str = "usage: cargo xtask ci                               run what CI runs (format, lint, tests, fuzz build, bench smoke)
       cargo xtask fuzz [--seconds N] [TARGET...]   fuzz each target (default: all) for N seconds (default 20)
       cargo xtask faults [--long] [FILTER]         the fault suite (short: as in CI; long: 50 kill trials, a
                                                    30-minute soak, …), figures in target/faults/report.md";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_default();
    match task.as_str() {
        "ci" => {
            let status = Command::new("bash").arg(root().join(".ci/run")).status().context("while running .ci/run")?;
            if !status.success() {
                bail!(".ci/run failed: {status}");
            }
            Ok(())
        }
        "fuzz" => fuzz(args.collect()),
        "faults" => faults(args.collect()),
        _ => {
            eprintln!("{USAGE}");
            bail!("unknown task {task:?}")
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Runs the fault suite (`crates/cli/tests/it/faults`) one fault at a time, short or long, and renders the figures
/// each fault reports into `target/faults/report.md` (the table `docs/RELIABILITY.md` takes).
fn faults(args: Vec<String>) -> Result<()> {
    let long = args.iter().any(|a| a == "--long");
    let filter = args.iter().find(|a| !a.starts_with("--")).cloned().unwrap_or_default();
    let dir = root().join("target/faults");
    fs::create_dir_all(&dir).context("while creating target/faults")?;
    let jsonl = dir.join("report.jsonl");
    let _ = fs::remove_file(&jsonl);
    let started = Instant::now();
    let status = cargo()
        .current_dir(root())
        .args(["test", "--locked", "-p", "hearth-cli", "--test", "it"])
        .arg(format!("faults::{filter}"))
        .args(["--", "--test-threads=1", "--nocapture"])
        .env("HEARTH_FAULTS", if long { "long" } else { "short" })
        .env("HEARTH_FAULTS_REPORT", &jsonl)
        .status()
        .context("while running the fault suite")?;
    let lines = fs::read_to_string(&jsonl).unwrap_or_default();
    let mut md = String::from("| fault | mode | trials | what was checked | figures |\n|---|---|---|---|---|\n");
    for line in lines.lines() {
        md.push_str(&report_row(line));
    }
    fs::write(dir.join("report.md"), &md).context("while writing target/faults/report.md")?;
    println!("{md}");
    println!("fault suite: {:.0} s, report in target/faults/report.md", started.elapsed().as_secs_f64());
    if !status.success() {
        bail!("the fault suite failed: {status}");
    }
    Ok(())
}

/// One markdown row from one JSON report line (`{"fault","mode","trials","checked","figures":{…}}`), without a
/// JSON dependency: the fields are pulled out as text.
fn report_row(line: &str) -> String {
    let field = |name: &str| -> String {
        let key = format!("\"{name}\":");
        let Some(start) = line.find(&key).map(|i| i + key.len()) else { return String::new() };
        let rest = &line[start..];
        if let Some(stripped) = rest.strip_prefix('"') {
            stripped.split('"').next().unwrap_or("").to_owned()
        } else if rest.starts_with('{') {
            let mut depth = 0;
            let end = rest
                .char_indices()
                .find(|(_, c)| {
                    depth += match c {
                        '{' => 1,
                        '}' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map_or(rest.len(), |(i, _)| i + 1);
            rest[..end].to_owned()
        } else {
            rest.split([',', '}']).next().unwrap_or("").to_owned()
        }
    };
    format!(
        "| {} | {} | {} | {} | `{}` |\n",
        field("fault"),
        field("mode"),
        field("trials"),
        field("checked"),
        field("figures")
    )
}

/// Stable Rust supports only `-s none` (no sanitizer); the build and the runs must use the same flags, or each run
/// rebuilds.
const SANITIZER: [&str; 2] = ["-s", "none"];

/// Runs each fuzz target for `--seconds` on a fresh copy of its seed corpus under `fuzz/target/corpus/`, so the
/// entries libFuzzer adds never land in the repository's `fuzz/corpus/`. Fails if any target finds a crash; the
/// input is then in `fuzz/artifacts/<target>/`.
fn fuzz(args: Vec<String>) -> Result<()> {
    let mut seconds: u64 = 20;
    let mut targets = Vec::new();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                let n = args.next().context("--seconds needs a value")?;
                seconds = n.parse().with_context(|| format!("--seconds takes whole seconds, not {n:?}"))?;
            }
            _ if arg.starts_with('-') => bail!("unknown option {arg:?}\n{USAGE}"),
            _ => targets.push(arg),
        }
    }
    let fuzz_dir = root().join("fuzz");
    ensure_cargo_fuzz()?;
    if targets.is_empty() {
        targets = list_targets(&fuzz_dir)?;
    }

    let started = Instant::now();
    let status =
        cargo().args(["fuzz", "build"]).args(SANITIZER).current_dir(&fuzz_dir).status().context("while building")?;
    if !status.success() {
        bail!("cargo fuzz build failed: {status}");
    }
    println!("fuzz: built {} targets in {:.0} s", targets.len(), started.elapsed().as_secs_f64());

    let work = fuzz_dir.join("target");
    let mut failed = Vec::new();
    for target in &targets {
        let corpus = work.join("corpus").join(target);
        let seeds = copy_seeds(&fuzz_dir.join("corpus").join(target), &corpus)?;
        let log_path = work.join("fuzz-logs").join(format!("{target}.log"));
        fs::create_dir_all(log_path.parent().expect("the log has a directory"))?;
        let log = fs::File::create(&log_path).with_context(|| format!("while creating {}", log_path.display()))?;
        let run_started = Instant::now();
        let status = cargo()
            .args(["fuzz", "run"])
            .args(SANITIZER)
            .arg(target)
            .arg(&corpus)
            .args(["--", &format!("-max_total_time={seconds}"), "-print_final_stats=1"])
            .current_dir(&fuzz_dir)
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .status()
            .with_context(|| format!("while running cargo fuzz run {target}"))?;
        let output = fs::read_to_string(&log_path).unwrap_or_default();
        let execs = executions(&output).map_or_else(|| "unknown".to_owned(), |n| n.to_string());
        let found = fs::read_dir(&corpus).map(|d| d.count()).unwrap_or(0);
        let secs = run_started.elapsed().as_secs_f64();
        if status.success() {
            println!("fuzz {target}: ok, {execs} executions in {secs:.0} s, corpus {seeds} seeds -> {found} entries");
        } else {
            println!("fuzz {target}: FAILED ({status}) after {execs} executions in {secs:.0} s; end of its log:");
            let lines: Vec<&str> = output.lines().collect();
            for line in &lines[lines.len().saturating_sub(60)..] {
                println!("    {line}");
            }
            println!("    (whole log: {}; crashing input: fuzz/artifacts/{target}/)", log_path.display());
            failed.push(target.as_str());
        }
    }
    if !failed.is_empty() {
        bail!("fuzz targets failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Installs cargo-fuzz when `cargo fuzz` is not there.
fn ensure_cargo_fuzz() -> Result<()> {
    let present = cargo()
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    println!("fuzz: installing cargo-fuzz");
    let status = cargo()
        .args(["install", "--locked", "cargo-fuzz"])
        .status()
        .context("while running cargo install cargo-fuzz")?;
    if !status.success() {
        bail!("cargo install --locked cargo-fuzz failed: {status}");
    }
    Ok(())
}

fn list_targets(fuzz_dir: &Path) -> Result<Vec<String>> {
    let out = cargo().args(["fuzz", "list"]).current_dir(fuzz_dir).output().context("while listing fuzz targets")?;
    if !out.status.success() {
        bail!("cargo fuzz list failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let targets: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if targets.is_empty() {
        bail!("cargo fuzz list found no targets in {}", fuzz_dir.display());
    }
    Ok(targets)
}

/// Replaces `to` with a copy of the seeds in `from` (which may not exist yet); returns how many there are.
fn copy_seeds(from: &Path, to: &Path) -> Result<usize> {
    if to.exists() {
        fs::remove_dir_all(to).with_context(|| format!("while clearing {}", to.display()))?;
    }
    fs::create_dir_all(to).with_context(|| format!("while creating {}", to.display()))?;
    let Ok(entries) = fs::read_dir(from) else { return Ok(0) };
    let mut n = 0;
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            fs::copy(entry.path(), to.join(entry.file_name()))
                .with_context(|| format!("while copying {}", entry.path().display()))?;
            n += 1;
        }
    }
    Ok(n)
}

/// The number of inputs libFuzzer ran, from its final statistics (`-print_final_stats=1`) or its `DONE` line.
fn executions(log: &str) -> Option<u64> {
    let stat = log.lines().rev().find_map(|l| l.trim().strip_prefix("stat::number_of_executed_units:"));
    if let Some(n) = stat.and_then(|n| n.trim().parse().ok()) {
        return Some(n);
    }
    // `#123456\tDONE   cov: ...`
    log.lines().rev().find_map(|l| {
        let (count, rest) = l.strip_prefix('#')?.split_once(char::is_whitespace)?;
        if rest.trim_start().starts_with("DONE") { count.parse().ok() } else { None }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_fault_report_line_becomes_a_table_row() {
        let line =
            r#"{"checked":"nothing lost","fault":"kill -9","figures":{"a":1,"b":{"c":2}},"mode":"long","trials":50}"#;
        assert_eq!(super::report_row(line), "| kill -9 | long | 50 | nothing lost | `{\"a\":1,\"b\":{\"c\":2}}` |\n");
    }

    use super::executions;

    #[test]
    fn executions_from_final_stats_or_done_line() {
        let log = concat!(
            "#2\tINITED cov: 10 ft: 10 corp: 1/1b\n",
            "#4242\tDONE   cov: 99 ft: 120 corp: 9/99b lim: 4 exec/s: 424 rss: 40Mb\n",
            "Done 4242 runs in 10 second(s)\n",
            "stat::number_of_executed_units: 4243\n",
            "stat::average_exec_per_sec:     424\n",
        );
        assert_eq!(executions(log), Some(4243));
        assert_eq!(executions("#4242\tDONE   cov: 99 ft: 120\n"), Some(4242));
        assert_eq!(executions("==1== ERROR: libFuzzer: deadly signal\n"), None);
    }
}
