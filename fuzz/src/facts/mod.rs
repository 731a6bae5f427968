//! What the probe fuzz target feeds `cairn-facts`, and the seed corpus it starts from.
//!
//! The one idea: the probe reads a response as it arrives and decides as soon as it can, so a
//! decision taken on the first bytes must be the one taken on all of them; otherwise the
//! verdict would depend on how the network split the answer. `probe_status`: the input is the
//! start of a response. Checked on it and on its prefixes: a decision on a prefix is the
//! decision on the whole (the same status, or a failure; a failure's text quotes what had
//! arrived, so it may show more of it); a status is a final one (100 to 599, no 1xx but 101);
//! a failure is one short line.
//!
//! `machine_config`: see [`config`].

pub mod config;

use cairn_facts::probe::run::fuzzing::final_status;
use cairn_facts::probe::MAX_RESPONSE_HEAD;

/// Checks the probe's reading of `head` and of its prefixes.
pub fn check_head(head: &[u8]) {
    let head = &head[..head.len().min(MAX_RESPONSE_HEAD)];
    let whole = final_status(head, false);
    check_decision(&whole);
    let at_end = final_status(head, true);
    check_decision(&at_end);
    // The end of the stream can only decide what was still open.
    match &whole {
        Ok(None) => {}
        Ok(status) => assert_eq!(at_end, Ok(*status), "the end of the stream changed it"),
        Err(_) => assert!(at_end.is_err(), "the end of the stream changed a refusal"),
    }
    // Every prefix for short inputs, some spread over longer ones.
    let step = (head.len() / 256).max(1);
    for end in (0..head.len()).step_by(step) {
        match final_status(&head[..end], false) {
            Ok(None) => {}
            Ok(status) => assert_eq!(Ok(status), whole, "decided on {end} bytes, then changed"),
            Err(_) => assert!(whole.is_err(), "refused on {end} bytes, then {whole:?}"),
        }
    }
}

fn check_decision(decision: &Result<Option<u16>, String>) {
    match decision {
        Ok(None) => {}
        Ok(Some(code)) => {
            assert!((100..=599).contains(code), "status {code}");
            assert!(!(100..200).contains(code) || *code == 101, "interim {code}");
        }
        Err(failure) => {
            assert!(!failure.chars().any(char::is_control), "{failure:?}");
            assert!(failure.len() < 400, "{failure:?}");
        }
    }
}

/// The seed corpus, as (target, file name, bytes).
pub fn seeds() -> Vec<crate::Seed> {
    let heads: [(&str, &[u8]); 5] = [
        ("ok", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        ("no-reason", b"HTTP/1.0 204\r\n\r\n"),
        (
            "interim",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
              HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\n\r\n",
        ),
        ("bare-lf", b"HTTP/1.1 404 Not Found\nServer: x\n\n"),
        (
            "upgrade",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
        ),
    ];
    heads
        .iter()
        .map(|(name, head)| {
            assert!(
                matches!(final_status(head, true), Ok(Some(_))),
                "seed {name} has no status"
            );
            ("probe_status", (*name).to_string(), head.to_vec())
        })
        .chain(
            config::seeds()
                .into_iter()
                .map(|(name, text)| ("machine_config", name, text)),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn seeds_pass_the_oracle() {
        for (target, _, bytes) in super::seeds() {
            match target {
                "probe_status" => super::check_head(&bytes),
                _ => super::config::check_config(&bytes),
            }
        }
    }
}
