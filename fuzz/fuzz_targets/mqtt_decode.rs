//! Fuzzes the hub's own MQTT decoder, `transport::mqtt::wire::Wire`: version detection on CONNECT, then the 3.1.1
//! or 5 codec, over arbitrary bytes arriving in arbitrary pieces, decoding after each piece as a session does until
//! it has no complete packet or an error (after which a session closes the connection). It must never panic nor
//! reserve memory for a length a packet only declares.
//!
//! Input: four header bytes, then the stream. Header byte 0's low bit picks the packet limit (the hub's default,
//! or 1 KiB, the smallest the configuration allows); header bytes 1..=3 are the lengths of the first three pieces
//! (0 = an empty read), and the rest of the stream is the last piece.
#![no_main]

use bytes::BytesMut;
use hearth_hub::transport::mqtt::MqttLimits;
use hearth_hub::transport::mqtt::wire::{In, Wire};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((header, mut stream)) = data.split_first_chunk::<4>() else { return };
    let max_packet = if header[0] & 1 == 0 { MqttLimits::default().max_packet } else { 1024 };
    let mut wire = Wire::new(max_packet);
    let mut buf = BytesMut::new();
    let mut decoded = 0usize;
    let pieces = header[1..].iter().map(|&n| usize::from(n)).chain([usize::MAX]);
    for len in pieces {
        let (piece, rest) = stream.split_at(len.min(stream.len()));
        stream = rest;
        buf.extend_from_slice(piece);
        loop {
            match wire.decode(&mut buf) {
                Ok(Some(packet)) => {
                    // The version is known from the first packet on, and that packet is the CONNECT.
                    assert!(wire.version().is_some(), "a packet decoded before the version was known");
                    if decoded == 0 {
                        assert!(matches!(packet, In::Connect { .. }), "the first packet must be CONNECT: {packet:?}");
                    }
                    decoded += 1;
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        // Growing for what arrived (at most doubling) or up to the limit is fine; room for a declared length is not.
        let allowed = 2 * (data.len() + max_packet as usize);
        assert!(buf.capacity() <= allowed, "the decoder reserved {} bytes for a declared length", buf.capacity());
    }
});
