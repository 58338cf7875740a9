//! The node agent (skeleton): the sampler, spool and pusher arrive with the agent's own issue.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "agent: not built yet; the node agent arrives with its own issue (sampler, spool, push)"
    );
    ExitCode::from(2)
}
