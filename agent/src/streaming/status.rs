//! What the error stream carries at the end of an exec or attach: from
//! `v4.channel.k8s.io` on, a Kubernetes `metav1.Status` as JSON, which
//! client-go turns into the command's exit code (reason
//! `NonZeroExitCode`, the code as the `ExitCode` cause); the older
//! protocols carry an error's text and nothing on success.

use super::Outcome;
use serde_json::json;

/// The v4+ error-stream message of `outcome`.
pub fn status_json(outcome: &Outcome) -> Vec<u8> {
    let status = match outcome {
        Outcome::Exited(0) => json!({"metadata": {}, "status": "Success"}),
        Outcome::Exited(code) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Outcome::Failed(message) => json!({
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": "InternalError",
        }),
    };
    serde_json::to_vec(&status).expect("JSON always serialises")
}

/// The pre-v4 error-stream message of `outcome`: none on success.
pub fn status_text(outcome: &Outcome) -> Option<Vec<u8>> {
    match outcome {
        Outcome::Exited(0) => None,
        Outcome::Exited(code) => Some(
            format!("command terminated with non-zero exit code: exit status {code}").into_bytes(),
        ),
        Outcome::Failed(message) => Some(message.clone().into_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_become_kubernetes_statuses() {
        let ok: serde_json::Value =
            serde_json::from_slice(&status_json(&Outcome::Exited(0))).expect("json");
        assert_eq!(ok, json!({"metadata": {}, "status": "Success"}));
        let failed: serde_json::Value =
            serde_json::from_slice(&status_json(&Outcome::Exited(3))).expect("json");
        assert_eq!(failed["status"], "Failure");
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(
            failed["details"]["causes"],
            json!([{"reason": "ExitCode", "message": "3"}])
        );
        assert_eq!(status_text(&Outcome::Exited(0)), None);
        assert!(status_text(&Outcome::Failed("no".into())).is_some());
    }
}
