//! `istio.v1.auth.IstioCertificateService/CreateCertificate`: authenticate the caller, decide
//! the identity it may have, sign its CSR.

use std::sync::Arc;
use std::time::Duration;

use spar_identity::{CertificateAuthority, TokenIssuer};
use spar_xds::ca::istio_certificate_service_server::IstioCertificateService;
use spar_xds::ca::{IstioCertificateRequest, IstioCertificateResponse};
use tonic::{Request, Response, Status};

use crate::auth::{authorize_identity, caller};
use crate::config::ConfigState;

pub struct CaService {
    pub ca: Arc<CertificateAuthority>,
    pub tokens: Arc<TokenIssuer>,
    pub config: Arc<ConfigState>,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let claims = caller(request.metadata(), &self.tokens).inspect_err(|s| {
            tracing::warn!(
                reason = s.message(),
                "certificate refused: caller not authenticated"
            );
        })?;
        let req = request.into_inner();
        let impersonate = req
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get("ImpersonatedIdentity"))
            .and_then(|v| match &v.kind {
                Some(prost_types::value::Kind::StringValue(s)) => Some(s.as_str()),
                _ => None,
            });
        let snapshot = self.config.current();
        let identity = authorize_identity(&snapshot.registry, &claims.subject, impersonate).inspect_err(|s| {
            tracing::warn!(caller = %claims.subject, wanted = ?impersonate, reason = s.message(), "certificate refused");
        })?;
        let ttl = match u64::try_from(req.validity_duration) {
            Ok(0) | Err(_) => self.default_ttl,
            Ok(secs) => Duration::from_secs(secs).min(self.max_ttl),
        };
        let issued = self
            .ca
            .sign_csr(&req.csr, &identity, ttl)
            .map_err(|e| Status::invalid_argument(e.to_string()))
            .inspect_err(|s| tracing::warn!(caller = %claims.subject, reason = s.message(), "certificate refused"))?;
        tracing::info!(caller = %claims.subject, %identity, ttl_secs = ttl.as_secs(), "issued certificate");
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: issued.chain,
        }))
    }
}
