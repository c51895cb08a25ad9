//! Debug for messages that carry secrets. build.rs turns off the generated
//! Debug for them; these print every field except the secret, so a stray
//! `{:?}` in a log line cannot leak a token (invariant 6).

use std::fmt;

use crate::proto::{CreateApiKeyResponse, CreateEnrollmentTokenResponse, EnrollRequest};

const REDACTED: &str = "[redacted]";

impl fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("token", &REDACTED)
            .field("csr_der", &format_args!("{} bytes", self.csr_der.len()))
            .field("hostname", &self.hostname)
            .field("agent_version", &self.agent_version)
            .finish()
    }
}

impl fmt::Debug for CreateEnrollmentTokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateEnrollmentTokenResponse")
            .field("token", &self.token)
            .field("join_token", &REDACTED)
            .finish()
    }
}

impl fmt::Debug for CreateApiKeyResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateApiKeyResponse")
            .field("key", &self.key)
            .field("api_key", &REDACTED)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::EnrollmentToken;

    #[test]
    fn debug_never_prints_secrets() {
        let req = EnrollRequest {
            token: "tok1.s3cr3t-value".into(),
            csr_der: vec![1, 2, 3],
            hostname: "db-host".into(),
            agent_version: "0.1.0".into(),
        };
        let printed = format!("{req:?}");
        assert!(!printed.contains("s3cr3t-value"), "{printed}");
        assert!(printed.contains("db-host"), "{printed}");

        let resp = CreateEnrollmentTokenResponse {
            token: Some(EnrollmentToken {
                token_id: "tok1".into(),
                ..Default::default()
            }),
            join_token: "tether-join.v1.tok1.s3cr3t-value.abcd".into(),
        };
        let printed = format!("{resp:?}");
        assert!(!printed.contains("s3cr3t-value"), "{printed}");
        assert!(printed.contains("tok1"), "{printed}");
    }
}
