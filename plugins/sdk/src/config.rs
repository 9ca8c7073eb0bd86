//! SPIRE's Config service: the server's core settings plus the plugin's HCL
//! `plugin_data`, parsed into the plugin's own typed configuration.

use std::sync::Arc;

use keygrid_proto::spire::service::common::config::v1::{
    config_server::Config, ConfigureRequest, ConfigureResponse, CoreConfiguration, ValidateRequest,
    ValidateResponse,
};
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status};

/// Settings of the SPIRE server that loads the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreConfig {
    /// The server's trust domain name, without `spiffe://`.
    pub trust_domain: String,
}

/// A configuration SPIRE sent that the plugin cannot use. The message reaches SPIRE's
/// log as the reason the plugin failed to configure, so it names the field or line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// SPIRE left out the core configuration.
    #[error("core configuration is missing from the Configure request")]
    MissingCore,
    /// SPIRE sent an empty trust domain.
    #[error("core configuration has an empty trust domain")]
    EmptyTrustDomain,
    /// `plugin_data` was given as a quoted string rather than a block.
    #[error(
        "plugin_data must be a block (plugin_data {{ key = \"value\" }}), not a quoted string"
    )]
    QuotedString,
    /// The HCL does not parse or does not match the expected fields.
    #[error("plugin_data: {0}")]
    Hcl(String),
    /// The HCL parses but a value is unusable.
    #[error("plugin_data: {0}")]
    Invalid(String),
}

impl From<ConfigError> for Status {
    fn from(e: ConfigError) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

/// Parses HCL `plugin_data` text into `T`. Unknown fields are reported only if `T`
/// says `#[serde(deny_unknown_fields)]`, which KeyGrid plugins do.
pub fn parse_hcl<T: DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    if text.trim_start().starts_with('"') {
        return Err(ConfigError::QuotedString);
    }
    hcl::from_str(text).map_err(|e| ConfigError::Hcl(e.to_string().trim().to_string()))
}

fn core_config(core: Option<CoreConfiguration>) -> Result<CoreConfig, ConfigError> {
    let core = core.ok_or(ConfigError::MissingCore)?;
    if core.trust_domain.trim().is_empty() {
        return Err(ConfigError::EmptyTrustDomain);
    }
    Ok(CoreConfig {
        trust_domain: core.trust_domain,
    })
}

/// A plugin that takes configuration from SPIRE.
pub trait Configurable: Send + Sync + 'static {
    /// The typed form of `plugin_data`.
    type Config: DeserializeOwned + Send;

    /// Checks values beyond their syntax (files exist, addresses parse). Validate and
    /// Configure both run it, so Validate predicts Configure.
    fn check(&self, core: &CoreConfig, config: &Self::Config) -> Result<(), ConfigError>;

    /// Applies a checked configuration. SPIRE may call this again at run time (reload),
    /// concurrently with other RPCs, so implementations swap the config atomically.
    fn apply(&self, core: CoreConfig, config: Self::Config) -> Result<(), ConfigError>;
}

/// `spire.service.common.config.v1.Config` for a [`Configurable`] plugin.
#[derive(Debug)]
pub struct ConfigService<P> {
    plugin: Arc<P>,
}

impl<P> Clone for ConfigService<P> {
    fn clone(&self) -> Self {
        ConfigService {
            plugin: self.plugin.clone(),
        }
    }
}

impl<P: Configurable> ConfigService<P> {
    /// Serves configuration for `plugin`.
    pub fn new(plugin: Arc<P>) -> Self {
        ConfigService { plugin }
    }

    fn parse_and_check(
        &self,
        core: Option<CoreConfiguration>,
        hcl: &str,
    ) -> Result<(CoreConfig, P::Config), ConfigError> {
        let core = core_config(core)?;
        let config: P::Config = parse_hcl(hcl)?;
        self.plugin.check(&core, &config)?;
        Ok((core, config))
    }
}

#[tonic::async_trait]
impl<P: Configurable> Config for ConfigService<P> {
    async fn configure(
        &self,
        request: Request<ConfigureRequest>,
    ) -> Result<Response<ConfigureResponse>, Status> {
        let req = request.into_inner();
        let result = self
            .parse_and_check(req.core_configuration, &req.hcl_configuration)
            .and_then(|(core, config)| self.plugin.apply(core, config));
        match result {
            Ok(()) => {
                tracing::info!("plugin configured");
                Ok(Response::new(ConfigureResponse {}))
            }
            Err(e) => {
                tracing::error!(error = %e, "plugin configuration rejected");
                Err(e.into())
            }
        }
    }

    async fn validate(
        &self,
        request: Request<ValidateRequest>,
    ) -> Result<Response<ValidateResponse>, Status> {
        let req = request.into_inner();
        let resp = match self.parse_and_check(req.core_configuration, &req.hcl_configuration) {
            Ok(_) => ValidateResponse {
                valid: true,
                notes: Vec::new(),
            },
            Err(e) => ValidateResponse {
                valid: false,
                notes: vec![e.to_string()],
            },
        };
        Ok(Response::new(resp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Demo {
        address: String,
        #[serde(default)]
        retries: u32,
    }

    #[derive(Default)]
    struct DemoPlugin {
        applied: Mutex<Option<(CoreConfig, String)>>,
    }

    impl Configurable for DemoPlugin {
        type Config = Demo;
        fn check(&self, _: &CoreConfig, config: &Demo) -> Result<(), ConfigError> {
            if config.address.is_empty() {
                return Err(ConfigError::Invalid("address must not be empty".into()));
            }
            Ok(())
        }
        fn apply(&self, core: CoreConfig, config: Demo) -> Result<(), ConfigError> {
            *self.applied.lock().unwrap() = Some((core, config.address));
            Ok(())
        }
    }

    fn req(td: Option<&str>, hcl: &str) -> Request<ConfigureRequest> {
        Request::new(ConfigureRequest {
            core_configuration: td.map(|t| CoreConfiguration {
                trust_domain: t.into(),
            }),
            hcl_configuration: hcl.into(),
        })
    }

    async fn configure(td: Option<&str>, hcl: &str) -> (Result<(), Status>, Arc<DemoPlugin>) {
        let plugin = Arc::new(DemoPlugin::default());
        let svc = ConfigService::new(plugin.clone());
        let r = svc.configure(req(td, hcl)).await.map(|_| ());
        (r, plugin)
    }

    #[tokio::test]
    async fn good_config_is_applied() {
        // The form SPIRE's HCL1 printer produces for a plugin_data block.
        let (r, plugin) = configure(
            Some("example.org"),
            "address = \"127.0.0.1:1\"\nretries = 2\n",
        )
        .await;
        r.unwrap();
        let applied = plugin.applied.lock().unwrap().clone().unwrap();
        assert_eq!(applied.0.trust_domain, "example.org");
        assert_eq!(applied.1, "127.0.0.1:1");
    }

    #[tokio::test]
    async fn malformed_hcl_is_invalid_argument_with_position() {
        let (r, plugin) = configure(Some("example.org"), "address = \"unterminated\n").await;
        let st = r.unwrap_err();
        assert_eq!(st.code(), tonic::Code::InvalidArgument);
        assert!(st.message().starts_with("plugin_data:"), "{}", st.message());
        assert!(plugin.applied.lock().unwrap().is_none(), "nothing applied");
    }

    #[tokio::test]
    async fn missing_and_unknown_fields_are_named() {
        let (r, _) = configure(Some("example.org"), "").await;
        let msg = r.unwrap_err().message().to_string();
        assert!(msg.contains("address"), "{msg}");
        let (r, _) = configure(Some("example.org"), "address = \"x\"\nadress2 = 1\n").await;
        let msg = r.unwrap_err().message().to_string();
        assert!(msg.contains("adress2"), "{msg}");
        let (r, _) = configure(Some("example.org"), "address = \"x\"\nretries = \"many\"\n").await;
        assert_eq!(r.unwrap_err().code(), tonic::Code::InvalidArgument);
    }

    #[tokio::test]
    async fn quoted_string_form_gets_a_hint() {
        let (r, _) = configure(Some("example.org"), "\"address = \\\"x\\\"\"").await;
        assert!(r.unwrap_err().message().contains("must be a block"));
    }

    #[tokio::test]
    async fn core_configuration_is_required() {
        let (r, _) = configure(None, "address = \"x\"").await;
        assert!(r
            .unwrap_err()
            .message()
            .contains("core configuration is missing"));
        let (r, _) = configure(Some(" "), "address = \"x\"").await;
        assert!(r.unwrap_err().message().contains("empty trust domain"));
    }

    #[tokio::test]
    async fn semantic_check_runs_and_validate_reports_it() {
        let (r, _) = configure(Some("example.org"), "address = \"\"").await;
        assert!(r
            .unwrap_err()
            .message()
            .contains("address must not be empty"));
        let svc = ConfigService::new(Arc::new(DemoPlugin::default()));
        let v = svc
            .validate(Request::new(ValidateRequest {
                core_configuration: Some(CoreConfiguration {
                    trust_domain: "example.org".into(),
                }),
                hcl_configuration: "address = \"\"".into(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(!v.valid);
        assert_eq!(v.notes.len(), 1);
    }
}
