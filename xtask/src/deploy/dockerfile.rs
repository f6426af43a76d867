//! deploy/Dockerfile, read as text: a builder as `cargo xtask setup`, a minimal final stage.
use super::problems::Problems;

/// One Dockerfile instruction: keyword (upper case) and the rest, continuation lines joined.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if cur.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if t.starts_with('#') {
            continue; // comment inside a continued instruction
        }
        if let Some(body) = t.strip_suffix('\\') {
            cur.push_str(body);
            cur.push(' ');
            continue;
        }
        cur.push_str(t);
        let (kw, rest) = cur
            .split_once(char::is_whitespace)
            .unwrap_or((cur.as_str(), ""));
        out.push((kw.to_ascii_uppercase(), rest.trim().to_string()));
        cur.clear();
    }
    out
}

/// Static checks of deploy/Dockerfile: a builder stage that installs what `cargo xtask setup`
/// installs (nightly + rust-src, bpf-linker at setup's version) and builds `-p podflow`; a
/// minimal final stage (distroless or debian-slim) with no RUN, no toolchain, only the binary
/// copied from the builder, a USER and the binary as entrypoint.
pub fn check_dockerfile(text: &str, setup_rs: &str) -> anyhow::Result<()> {
    let mut p = Problems::default();
    let ins = instructions(text);
    let mut stages: Vec<Vec<(String, String)>> = Vec::new();
    for i in ins {
        if i.0 == "FROM" {
            stages.push(Vec::new());
        }
        if let Some(s) = stages.last_mut() {
            s.push(i);
        }
    }
    p.expect(stages.len() >= 2, || {
        format!(
            "expected a multi-stage build, found {} stage(s)",
            stages.len()
        )
    });
    if stages.len() < 2 {
        return p.into_result();
    }
    let from = |s: &Vec<(String, String)>| s[0].1.clone();
    let builder = &stages[0];
    let b_from = from(builder);
    p.expect(b_from.to_ascii_lowercase().ends_with(" as builder"), || {
        format!("first stage must be `AS builder`: {b_from}")
    });
    p.expect(b_from.contains("rust:"), || {
        format!("builder must start from a rust image: {b_from}")
    });
    let builder_runs = builder
        .iter()
        .filter(|(k, _)| k == "RUN")
        .map(|(_, r)| r.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    p.expect(
        builder_runs.contains("rustup toolchain install nightly")
            && builder_runs.contains("rust-src"),
        || "builder must install the nightly toolchain with rust-src".into(),
    );
    p.expect(builder_runs.contains("bpf-linker@${BPF_LINKER_VERSION}") && builder_runs.contains("LLVM_PREFIX"), || {
        "builder must build bpf-linker@${BPF_LINKER_VERSION} against the nightly's libLLVM (LLVM_PREFIX)".into()
    });
    p.expect(
        builder_runs.contains("cargo build --release --locked -p podflow"),
        || "builder must run `cargo build --release --locked -p podflow`".into(),
    );
    // bpf-linker's version equals `cargo xtask setup`'s.
    let setup_version = setup_rs
        .lines()
        .find_map(|l| l.trim().strip_prefix("const BPF_LINKER_VERSION: &str = \""))
        .and_then(|r| r.strip_suffix("\";"));
    let docker_version = instructions(text)
        .into_iter()
        .filter(|(k, _)| k == "ARG")
        .find_map(|(_, a)| a.strip_prefix("BPF_LINKER_VERSION=").map(str::to_string));
    p.expect(
        setup_version.is_some() && docker_version.as_deref() == setup_version,
        || {
            format!(
                "ARG BPF_LINKER_VERSION={docker_version:?} must equal setup.rs's {setup_version:?}"
            )
        },
    );

    let Some(last) = stages.last() else {
        return p.into_result();
    };
    let l_from = from(last);
    let base = l_from.split_whitespace().next().unwrap_or("");
    p.expect(
        base.starts_with("gcr.io/distroless/cc")
            || (base.starts_with("debian:") && base.ends_with("-slim"))
            || (base.starts_with("docker.io/library/debian:") && base.ends_with("-slim")),
        || format!("final stage must be distroless/cc or debian-slim, is {base}"),
    );
    let allowed = [
        "FROM",
        "LABEL",
        "COPY",
        "USER",
        "ENTRYPOINT",
        "CMD",
        "ENV",
        "WORKDIR",
        "EXPOSE",
        "ARG",
    ];
    for (k, rest) in last {
        p.expect(allowed.contains(&k.as_str()), || {
            format!("final stage must not {k}: {k} {rest}")
        });
        let lower = rest.to_ascii_lowercase();
        for tool in ["cargo", "rustup", "rustc", "bpf-linker", "apt-get", "llvm"] {
            p.expect(k == "LABEL" || !lower.contains(tool), || {
                format!("final stage mentions {tool}: {k} {rest}")
            });
        }
        if k == "COPY" {
            p.expect(
                rest.starts_with("--from=builder ")
                    && rest.split_whitespace().count() == 3
                    && rest.contains("/podflow "),
                || {
                    format!(
                        "final stage may copy only the podflow binary from the builder: COPY {rest}"
                    )
                },
            );
        }
    }
    let user = last
        .iter()
        .rev()
        .find(|(k, _)| k == "USER")
        .map(|(_, u)| u.as_str());
    p.expect(user.is_some_and(|u| !u.is_empty()), || {
        "final stage must set USER".into()
    });
    let entry = last
        .iter()
        .rev()
        .find(|(k, _)| k == "ENTRYPOINT")
        .map(|(_, e)| e.as_str());
    p.expect(entry.is_some_and(|e| e.contains("/podflow\"")), || {
        "final stage's ENTRYPOINT must be the podflow binary".into()
    });
    p.into_result()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::{DOCKERFILE, read};

    #[test]
    fn committed_dockerfile_passes_and_mistakes_are_caught() {
        let text = read(DOCKERFILE).unwrap();
        let setup = read("xtask/src/setup.rs").unwrap();
        check_dockerfile(&text, &setup).unwrap();

        let with_run = text.replace(
            "USER 65532:65532",
            "RUN apt-get install -y curl\nUSER 65532:65532",
        );
        let e = format!("{:#}", check_dockerfile(&with_run, &setup).unwrap_err());
        assert!(
            e.contains("final stage must not RUN") && e.contains("mentions apt-get"),
            "{e}"
        );

        let no_user = text.replace("USER 65532:65532", "");
        let e = format!("{:#}", check_dockerfile(&no_user, &setup).unwrap_err());
        assert!(e.contains("must set USER"), "{e}");

        let toolchain = text.replace(
            "FROM gcr.io/distroless/cc-debian12:nonroot AS runtime",
            "FROM docker.io/library/rust:1.95 AS runtime",
        );
        let e = format!("{:#}", check_dockerfile(&toolchain, &setup).unwrap_err());
        assert!(e.contains("distroless/cc or debian-slim"), "{e}");

        let copy_all = text.replace(
            "COPY --from=builder /out/podflow /usr/local/bin/podflow",
            "COPY --from=builder /usr/local/cargo /cargo",
        );
        let e = format!("{:#}", check_dockerfile(&copy_all, &setup).unwrap_err());
        assert!(e.contains("only the podflow binary"), "{e}");

        let other_linker = setup.replace("\"0.13.0\"", "\"9.9.9\"");
        assert!(other_linker != setup || !setup.contains("\"0.13.0\""));
        if other_linker != setup {
            let e = format!("{:#}", check_dockerfile(&text, &other_linker).unwrap_err());
            assert!(e.contains("BPF_LINKER_VERSION"), "{e}");
        }

        let single = "FROM docker.io/library/rust:1.95\nRUN cargo build\n";
        assert!(
            format!("{:#}", check_dockerfile(single, &setup).unwrap_err()).contains("multi-stage")
        );
    }

    #[test]
    fn instructions_join_continuations() {
        let ins = instructions("# c\nFROM a AS b\nRUN x \\\n  # inner\n  y\nuser 1\n");
        assert_eq!(
            ins,
            vec![
                ("FROM".into(), "a AS b".into()),
                ("RUN".into(), "x  y".into()),
                ("USER".into(), "1".into())
            ]
        );
    }
}
