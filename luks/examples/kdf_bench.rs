//! Times argon2id derivations (64-byte output, as a keyslot derives) for a few cost settings and
//! prints each time with its cost per KiB-pass and the time it would take on a CPU `RATIO`
//! times slower (default 7, the estimate for a Raspberry Pi 4 in docs/luks2.md). Run it on the
//! target itself to replace the estimate with a measurement.
//!
//! `cargo run --release -p cairn-luks --example kdf_bench [RATIO]`

use std::time::Instant;

fn main() {
    let ratio: f64 = std::env::args()
        .nth(1)
        .map(|r| r.parse().expect("RATIO is a number"))
        .unwrap_or(7.0);
    let sets: [(u32, u32, u32); 8] = [
        // (time, memory KiB, lanes)
        (4, 32 * 1024, 1),
        (4, 40 * 1024, 1),
        (4, 48 * 1024, 1),
        (4, 64 * 1024, 1),
        (4, 128 * 1024, 1),
        (4, 256 * 1024, 1),
        (4, 256 * 1024, 4),
        (2, 512 * 1024, 4),
    ];
    let salt = [0x5au8; 32];
    println!("time  memory    lanes  seconds  ns per KiB-pass  seconds at {ratio}x");
    for (time, memory, cpus) in sets {
        // One warm-up derivation so page faults of the first allocation are not counted twice.
        cairn_luks::argon2id(b"benchmark", &salt, 1, memory, cpus).expect("argon2id");
        let runs = 3;
        let start = Instant::now();
        for _ in 0..runs {
            cairn_luks::argon2id(b"benchmark", &salt, time, memory, cpus).expect("argon2id");
        }
        let secs = start.elapsed().as_secs_f64() / f64::from(runs);
        let per = secs * 1e9 / (f64::from(time) * f64::from(memory));
        println!(
            "{time:>4}  {:>5} MiB  {cpus:>5}  {secs:>7.3}  {per:>15.2}  {:>7.2}",
            memory / 1024,
            secs * ratio
        );
    }
}
