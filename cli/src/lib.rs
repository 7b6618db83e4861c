//! The kubesign command line as a library: configuration, the kubeadm directory layout,
//! kubeconfig handling, atomic file writes, the audit log, backend selection and the commands,
//! including `serve`, the CertificateSigningRequest controller.
//! `src/main.rs` is only argument parsing; integration tests and fuzzers call in here.

pub mod audit_log;
pub mod backends;
pub mod cas;
pub mod cmd_ca;
pub mod cmd_check;
pub mod cmd_renew;
pub mod cmd_sign;
pub mod config;
pub mod duration;
pub mod fsutil;
pub mod kubeadm_dir;
pub mod kubeconfig;
pub mod output;
pub mod serve;
