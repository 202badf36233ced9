//! Fuzzes MQTT decoding the way the hub does it: version detection on CONNECT, then the 3.1.1 or 5 codec with
//! the hub's 64 KiB packet limit, over arbitrary bytes split at an arbitrary point.
#![no_main]

use bytes::BytesMut;
use rmqtt_codec::version::{ProtocolVersion, VersionCodec};
use rmqtt_codec::{v3, v5};
use tokio_util::codec::Decoder as _;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else { return };
    let split = usize::from(split).min(data.len());
    let mut buf = BytesMut::from(&data[..split]);
    let version = match VersionCodec.decode(&mut buf) {
        Ok(Some(v)) => v,
        _ => {
            buf.extend_from_slice(&data[split..]);
            match VersionCodec.decode(&mut buf) {
                Ok(Some(v)) => v,
                _ => return,
            }
        }
    };
    buf.extend_from_slice(&data[split..]);
    match version {
        ProtocolVersion::MQTT3 => {
            let mut codec = v3::Codec::new(64 * 1024);
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
        }
        ProtocolVersion::MQTT5 => {
            let mut codec = v5::Codec::new(64 * 1024, 0);
            while let Ok(Some(_)) = codec.decode(&mut buf) {}
        }
    }
    assert!(buf.capacity() <= 1 << 20, "the decoder must not reserve more than the packet limit allows");
});
