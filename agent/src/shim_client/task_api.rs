//! The task API client, for both names of the service: containerd 2.x
//! shims (berth's own among them) serve `containerd.task.v3.Task`, shims of
//! containerd 1.x the same messages as `containerd.task.v2.Task`. The
//! generated client of `containerd-shim-protos` knows only v3; this one
//! sends the same requests under the name the shim announced when it
//! started (see [`super::parse_start_reply`]).

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim_async::Client;
use containerd_shim_protos::ttrpc;
use containerd_shim_protos::ttrpc::context::Context;
use serde::{Deserialize, Serialize};

/// The task API version a shim speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum TaskApi {
    /// `containerd.task.v2.Task` (containerd 1.x shims).
    V2,
    /// `containerd.task.v3.Task` (containerd 2.x shims, berth's shim).
    #[default]
    V3,
}

impl TaskApi {
    fn service(self) -> &'static str {
        match self {
            TaskApi::V2 => "containerd.task.v2.Task",
            TaskApi::V3 => "containerd.task.v3.Task",
        }
    }
}

/// A task client for one shim connection.
#[derive(Clone)]
pub struct TaskClient {
    client: Client,
    service: &'static str,
}

/// One method per task RPC berth uses: `name(Request) -> Response = "Rpc"`.
macro_rules! task_rpcs {
    ($($name:ident($request:ty) -> $response:ty = $rpc:literal;)*) => {
        $(
            pub async fn $name(&self, ctx: Context, req: &$request) -> ttrpc::Result<$response> {
                self.call(ctx, $rpc, req).await
            }
        )*
    };
}

impl TaskClient {
    pub fn new(client: Client, api: TaskApi) -> Self {
        Self {
            client,
            service: api.service(),
        }
    }

    async fn call<Req: Message, Resp: Message>(
        &self,
        ctx: Context,
        rpc: &str,
        req: &Req,
    ) -> ttrpc::Result<Resp> {
        let codec = |what: &str, e: containerd_shim_protos::protobuf::Error| {
            ttrpc::Error::Others(format!("{what} {}/{rpc}: {e}", self.service))
        };
        let mut request = ttrpc::Request::new();
        request.set_service(self.service.to_owned());
        request.set_method(rpc.to_owned());
        request.set_timeout_nano(ctx.timeout_nano);
        request.set_metadata(ttrpc::context::to_pb(ctx.metadata));
        request.payload = req.write_to_bytes().map_err(|e| codec("encoding", e))?;
        let response = self.client.request(request).await?;
        Resp::parse_from_bytes(&response.payload).map_err(|e| codec("decoding", e))
    }

    task_rpcs! {
        state(api::StateRequest) -> api::StateResponse = "State";
        create(api::CreateTaskRequest) -> api::CreateTaskResponse = "Create";
        start(api::StartRequest) -> api::StartResponse = "Start";
        delete(api::DeleteRequest) -> api::DeleteResponse = "Delete";
        kill(api::KillRequest) -> Empty = "Kill";
        exec(api::ExecProcessRequest) -> Empty = "Exec";
        resize_pty(api::ResizePtyRequest) -> Empty = "ResizePty";
        update(api::UpdateTaskRequest) -> Empty = "Update";
        wait(api::WaitRequest) -> api::WaitResponse = "Wait";
        connect(api::ConnectRequest) -> api::ConnectResponse = "Connect";
        shutdown(api::ShutdownRequest) -> Empty = "Shutdown";
    }
}
