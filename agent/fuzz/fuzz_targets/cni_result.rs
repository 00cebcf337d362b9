//! What a CNI plugin prints: any stdout and stderr, with a zero or failed
//! exit, gives a result or an error naming the plugin and command, never a
//! panic; the pod IPs taken from a result are addresses.
#![no_main]

use berth_agent::network::cni::{plugin_output, result_ips, Command};
use libfuzzer_sys::fuzz_target;
use std::os::unix::process::ExitStatusExt;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    // The selector picks the exit and the command; stderr is what follows
    // a 0xff byte in the input, if any.
    let (stdout, stderr) = match rest.iter().position(|&b| b == 0xff) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let command = [Command::Add, Command::Check, Command::Del][usize::from(selector % 3)];
    let code = i32::from(selector >> 2);
    let output = std::process::Output {
        status: std::process::ExitStatus::from_raw(code << 8),
        stdout: stdout.to_vec(),
        stderr: stderr.to_vec(),
    };
    match plugin_output("bridge", command, &output) {
        Ok(result) => {
            assert!(code == 0, "a failed plugin gave a result");
            for ip in result_ips(&result) {
                assert!(!ip.to_string().contains('/'));
            }
        }
        Err(e) => assert!(e.to_string().contains("bridge"), "{e}"),
    }
});
