//! Workflow template RPCs.

use tonic::Request;

use crate::error::{Error, Result};
use crate::proto as pb;
use crate::server::state::AppState;

const AREA: &str = "workflow templates (templates issue)";

pub async fn upload_template(
    _state: &AppState,
    _request: Request<pb::UploadTemplateRequest>,
) -> Result<pb::UploadTemplateResponse> {
    Err(Error::unimplemented(AREA))
}

pub async fn run_template(
    _state: &AppState,
    _request: Request<pb::RunTemplateRequest>,
) -> Result<pb::TemplateRun> {
    Err(Error::unimplemented(AREA))
}

pub async fn list_templates(
    _state: &AppState,
    _request: Request<pb::TemplateFilter>,
) -> Result<pb::TemplateList> {
    Err(Error::unimplemented(AREA))
}

pub async fn list_template_runs(
    _state: &AppState,
    _request: Request<pb::TemplateRunFilter>,
) -> Result<pb::TemplateRunList> {
    Err(Error::unimplemented(AREA))
}

pub async fn update_template_run(
    _state: &AppState,
    _request: Request<pb::UpdateTemplateRunRequest>,
) -> Result<pb::Ack> {
    Err(Error::unimplemented(AREA))
}

pub async fn delete_template_run(
    _state: &AppState,
    _request: Request<pb::DeleteTemplateRunRequest>,
) -> Result<pb::Ack> {
    Err(Error::unimplemented(AREA))
}
