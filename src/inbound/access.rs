//! Access rules: who may connect to a listener. Checked once the client is known (the PROXY
//! source and VPC endpoint when there is a header, else the socket's peer), before any limit
//! is counted or any server is picked; a refusal names the rule, which the access log shows as
//! `end=refused_rule detail=<rule>`.

use std::net::IpAddr;

use crate::inbound::listener::ListenerSettings;

impl ListenerSettings {
    /// The access rules: not denied, and inside every allow list that is set. On refusal, the
    /// rule that refused.
    pub fn admits(&self, client: IpAddr, vpce: Option<&str>) -> Result<(), &'static str> {
        let config = &self.config;
        if config.deny.iter().any(|net| net.contains(&client)) {
            return Err("deny");
        }
        if !config.allow.is_empty() && !config.allow.iter().any(|net| net.contains(&client)) {
            return Err("allow");
        }
        if !config.allow_vpce.is_empty()
            && !vpce.is_some_and(|id| {
                config
                    .allow_vpce
                    .iter()
                    .any(|allowed| allowed.as_str() == id)
            })
        {
            return Err("allow_vpce");
        }
        Ok(())
    }
}
