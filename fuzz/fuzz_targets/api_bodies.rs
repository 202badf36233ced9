//! Fuzzes every JSON request body the hub's API accepts, each through the hub's own extractor (`ApiJson`, so
//! a refusal must be a 4xx) and, when it parses, through the hub's validation of it: enrolment and renewal CSRs
//! go to the issuing code, command requests to `Commands::send`, command acknowledgements to `CommandAck::parse`.
//! Manufacture, setup, API-token, sign-in, password-change, claim, support-grant, sign-up, link, reset and invitation bodies are validated inside deserialization
//! (`ModelId`) and otherwise inline in their handlers next to store calls, so only their extraction runs here (the
//! password rules have their own target, `password`: zxcvbn is slow enough to starve this one).
#![no_main]

use hearth_fuzz::hub;
use hearth_hub::transport::https::api::{CommandRequest, NewTokenRequest, SetupRequest};
use hearth_hub::transport::https::links::{CompleteRequest, InviteRequest, ResetRequest, SignUpRequest, VerifyRequest};
use hearth_hub::transport::https::passkeys::{CeremonyAnswer, PasskeySignIn, PasskeySignUp, RegisterFinish};
use hearth_hub::transport::https::people::{ClaimRequest, PasswordChange, SignInRequest, SupportGrantRequest};
use hearth_proto::command::CommandAck;
use hearth_proto::enrol::{EnrolRequest, ManufactureRequest, RenewRequest};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let hub = hub();
    if let Some(req) = hub.extract::<EnrolRequest>(data) {
        hub.check_csr(&req.device_id, &req.csr_pem);
    }
    if let Some(req) = hub.extract::<RenewRequest>(data) {
        hub.check_csr(hub.device(), &req.csr_pem);
    }
    if let Some(req) = hub.extract::<CommandRequest>(data) {
        hub.check_command(&req.name, req.args, req.timeout_secs);
    }
    let _ = hub.extract::<ManufactureRequest>(data);
    let _ = hub.extract::<SetupRequest>(data);
    let _ = hub.extract::<NewTokenRequest>(data);
    let _ = hub.extract::<SignInRequest>(data);
    let _ = hub.extract::<PasswordChange>(data);
    let _ = hub.extract::<ClaimRequest>(data);
    let _ = hub.extract::<SupportGrantRequest>(data);
    let _ = hub.extract::<SignUpRequest>(data);
    let _ = hub.extract::<VerifyRequest>(data);
    let _ = hub.extract::<RegisterFinish>(data);
    let _ = hub.extract::<CeremonyAnswer>(data);
    let _ = hub.extract::<PasskeySignIn>(data);
    let _ = hub.extract::<PasskeySignUp>(data);
    let _ = hub.extract::<ResetRequest>(data);
    let _ = hub.extract::<CompleteRequest>(data);
    let _ = hub.extract::<InviteRequest>(data);
    // Devices send acknowledgements over MQTT, not HTTP, but they are the other JSON the hub parses from outside.
    if let Ok(ack) = CommandAck::parse(data) {
        assert_eq!(CommandAck::parse(&ack.to_json()), Ok(ack), "an acknowledgement must re-encode to itself");
    }
});
