//! Relaying: which committed events are forwarded to which devices' `cmd/<device_id>` topic
//! (DESIGN.md, "Relaying"). Pure: decided from the event, the projections *before* the
//! record was applied (to find the parties of an offer or a command) and whether the fold
//! accepted it. Refused events are never relayed (the fold raises their alerts).

use pairbus_projector::Projections;
use pairbus_schemas::{Body, DeviceId, Event, PrincipalKind};

/// The devices to forward `event` to, decided before the record is applied.
pub fn targets(event: &Event, before: &Projections) -> Vec<DeviceId> {
    let offer_parties = |nonce: &[u8; 16]| {
        before
            .offers
            .get(nonce)
            .map(|o| (o.manager.clone(), o.sensor.clone()))
    };
    let signer_device = event.src.device_id();
    match &event.body {
        Body::PairingRequested(b) => vec![b.manager.clone()],
        Body::PairingOffered(b) => vec![b.sensor.clone()],
        Body::PairingAccepted(b) => vec![b.manager.clone()],
        Body::PairingDeclined(b) | Body::PairingCancelled(b) => match offer_parties(&b.nonce) {
            // Tell the other party.
            Some((manager, sensor)) if signer_device.as_ref() == Some(&manager) => vec![sensor],
            Some((manager, _)) => vec![manager],
            None => vec![],
        },
        Body::PairingUnpaired(b) => {
            if event.src.kind() == PrincipalKind::Operator {
                // An operator's unpair concerns both devices.
                vec![event.device.clone(), b.peer.clone()]
            } else {
                vec![b.peer.clone()]
            }
        }
        Body::CommandIssued(b) => vec![b.target.clone()],
        Body::CommandCompleted(b) => before
            .commands
            .get(&b.command_id)
            .map(|c| vec![c.issuer.clone()])
            .unwrap_or_default(),
        Body::Revoked(_) => vec![event.device.clone()],
        Body::SetupCompleted(_) | Body::ModeChanged(_)
            if event.src.kind() == PrincipalKind::Operator =>
        {
            vec![event.device.clone()]
        }
        _ => vec![],
    }
}
