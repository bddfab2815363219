//! Differential target for the fast paths: `cbor::decode_strict`, `Event::decode` and
//! `Unverified::parse` (then `verify` and the rest of `open_event`) must give exactly the
//! results of their references (`decode_strict_reference`, `Event::decode_reference`,
//! `Unverified::parse_reference`), error variants and messages included. Each input is tried
//! as it is (as a payload and as an envelope, re-tagged with the right MAC when it is a
//! COSE_Mac0), and as edits of a valid sample event: its payload, the edited payload sealed
//! with the right key, and its edited envelope, re-tagged. The checks live in
//! `pairbus_schemas::differential`, shared with the proptests.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pairbus_schemas::differential::check_all(data);
});
