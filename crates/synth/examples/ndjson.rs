//! Prints synthetic patients as NDJSON, one resource a line, e.g. to feed an external FHIR
//! validator: `cargo run -p medledger-synth --example ndjson -- <seed> <patients>`.

use std::io::Write as _;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let seed = args.next().map_or(Ok(1), |arg| arg.parse()).expect("seed is a u64");
    let count = args.next().map_or(Ok(1), |arg| arg.parse()).expect("patient count is a usize");
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for patient in medledger_synth::Generator::new(seed).patients(count) {
        for resource in patient.resources {
            out.write_all(&resource.json)?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()
}
