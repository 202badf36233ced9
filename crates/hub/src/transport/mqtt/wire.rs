//! The MQTT wire, through `rmqtt-codec`: detects the protocol version from CONNECT, then decodes inbound packets
//! into one version-neutral [`In`] and encodes the hub's answers ([`Out`]) in the connection's version. The
//! session logic above never sees a version-specific type.

use std::num::NonZeroU16;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use rmqtt_codec::error::DecodeError;
use rmqtt_codec::types::{Publish, QoS};
use rmqtt_codec::version::{ProtocolVersion, VersionCodec};
use rmqtt_codec::{v3, v5};
use tokio_util::codec::{Decoder as _, Encoder as _};

/// Protocol version of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1 / 3.1.1.
    V3,
    /// MQTT 5.
    V5,
}

/// A decoded inbound packet.
#[derive(Debug)]
pub enum In {
    /// CONNECT.
    Connect {
        /// Client id.
        client_id: ByteString,
        /// Keep-alive seconds.
        keep_alive: u16,
        /// Clean session / clean start.
        clean: bool,
        /// MQTT 5 session expiry interval (3.1.1: 0 when clean, "forever" otherwise).
        session_expiry: u32,
        /// MQTT 5: QoS 1 messages the client accepts unacknowledged (3.1.1 and absent: 65535).
        receive_max: u16,
        /// MQTT 5: the largest packet the client accepts, if it set one.
        max_packet_size: Option<u32>,
        /// MQTT 3.1 (`MQIsdp`, level 3), which the hub does not support (only 3.1.1 and 5).
        legacy_31: bool,
        /// The will message, if the client set one.
        will: Option<WillIn>,
    },
    /// PUBLISH.
    Publish {
        /// Topic name.
        topic: ByteString,
        /// Payload.
        payload: Bytes,
        /// QoS 0, 1 or 2.
        qos: u8,
        /// Retain flag.
        retain: bool,
        /// Packet id (QoS > 0).
        packet_id: Option<NonZeroU16>,
        /// Why the PUBLISH breaks a rule the codec does not check, if it does (the session refuses it).
        violation: Option<PublishViolation>,
    },
    /// PUBACK for a message the hub sent.
    PubAck {
        /// Packet id.
        packet_id: NonZeroU16,
    },
    /// SUBSCRIBE.
    Subscribe {
        /// Packet id.
        packet_id: NonZeroU16,
        /// Filters with requested QoS.
        filters: Vec<(ByteString, u8)>,
    },
    /// UNSUBSCRIBE.
    Unsubscribe {
        /// Packet id.
        packet_id: NonZeroU16,
        /// Filters.
        filters: Vec<ByteString>,
    },
    /// PINGREQ.
    PingReq,
    /// DISCONNECT from the client.
    Disconnect {
        /// MQTT 5: any reason but 0x00 (0x04 asks for the will; an error code leaves it to be published).
        with_will: bool,
        /// MQTT 5: a new session expiry interval, seconds.
        session_expiry: Option<u32>,
    },
    /// A packet a client must not send to a server, or QoS 2 flow packets.
    Unexpected(&'static str),
}

/// A will message as CONNECT carries it.
#[derive(Debug, Clone)]
pub struct WillIn {
    /// Topic.
    pub topic: ByteString,
    /// Payload.
    pub payload: Bytes,
    /// QoS 0, 1 or 2.
    pub qos: u8,
    /// Retain flag.
    pub retain: bool,
    /// MQTT 5 will delay interval, seconds (0 when absent).
    pub delay_secs: u32,
}

/// A rule of PUBLISH that `rmqtt-codec` does not enforce itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishViolation {
    /// The DUP flag on a QoS 0 message (MQTT-3.3.1-2: malformed).
    DupOnQos0,
    /// A topic alias, which the hub does not allow (Topic Alias Maximum 0; MQTT 5 §3.3.2.3.4: 0x94).
    TopicAlias,
    /// A subscription identifier, which only a server may send (MQTT-3.3.4-6: protocol error).
    SubscriptionIdentifier,
}

/// MQTT 5 reason codes the hub uses (3.1.1 maps them to its return codes or to closing the connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// 0x00.
    Success,
    /// 0x80.
    UnspecifiedError,
    /// 0x81.
    MalformedPacket,
    /// 0x82.
    ProtocolError,
    /// 0x83 (a seq conflict on PUBACK).
    ImplementationSpecific,
    /// 0x85 (CONNACK only; 3.1.1: return code 2, identifier rejected).
    ClientIdNotValid,
    /// 0x84 (CONNACK only; 3.1.1: return code 1, unacceptable protocol version).
    UnsupportedProtocolVersion,
    /// 0x87.
    NotAuthorized,
    /// 0x88 (CONNACK) / server busy.
    ServerUnavailable,
    /// 0x8B.
    ServerShuttingDown,
    /// 0x8D.
    KeepAliveTimeout,
    /// 0x8E.
    SessionTakenOver,
    /// 0x8F.
    TopicFilterInvalid,
    /// 0x90.
    TopicNameInvalid,
    /// 0x93.
    ReceiveMaximumExceeded,
    /// 0x94.
    TopicAliasInvalid,
    /// 0x95.
    PacketTooLarge,
    /// 0x96.
    MessageRateTooHigh,
    /// 0x97.
    QuotaExceeded,
    /// 0x98.
    AdministrativeAction,
    /// 0x99.
    PayloadFormatInvalid,
    /// 0x9A.
    RetainNotSupported,
    /// 0x9B.
    QosNotSupported,
}

/// An outbound packet.
#[derive(Debug)]
pub enum Out {
    /// CONNACK.
    ConnAck {
        /// Outcome.
        reason: Reason,
        /// Whether a session was resumed.
        session_present: bool,
        /// MQTT 5: the hub's receive maximum.
        receive_max: u16,
        /// MQTT 5: maximum packet size.
        max_packet_size: u32,
        /// MQTT 5: a keep-alive the client must use instead of its own.
        server_keep_alive: Option<u16>,
        /// MQTT 5: the client id the hub assigned (when the client sent none).
        assigned_client_id: Option<ByteString>,
        /// MQTT 5: human-readable reason.
        reason_string: Option<String>,
    },
    /// PUBACK.
    PubAck {
        /// Packet id.
        packet_id: NonZeroU16,
        /// Outcome.
        reason: Reason,
        /// MQTT 5: human-readable reason.
        reason_string: Option<String>,
        /// MQTT 5: user properties (for example `highest_seq` on a seq conflict).
        properties: Vec<(ByteString, ByteString)>,
    },
    /// SUBACK: per filter, granted QoS or a refusal.
    SubAck {
        /// Packet id.
        packet_id: NonZeroU16,
        /// Per filter.
        results: Vec<Result<u8, Reason>>,
    },
    /// UNSUBACK.
    UnsubAck {
        /// Packet id.
        packet_id: NonZeroU16,
        /// Number of filters.
        count: usize,
    },
    /// PINGRESP.
    PingResp,
    /// PUBLISH (QoS 1) to the device.
    Publish {
        /// Topic.
        topic: ByteString,
        /// Payload.
        payload: Bytes,
        /// Packet id.
        packet_id: NonZeroU16,
    },
    /// DISCONNECT (MQTT 5 only; on 3.1.1 the connection is just closed).
    Disconnect {
        /// Why.
        reason: Reason,
        /// Human-readable reason.
        reason_string: Option<String>,
    },
}

/// Why decoding failed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The packet is larger than the limit.
    #[error("packet of {size} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Declared size.
        size: u32,
        /// Limit.
        max: u32,
    },
    /// Not a valid MQTT packet.
    #[error("malformed packet: {0}")]
    Malformed(String),
    /// The first packet is not a CONNECT of a supported protocol.
    #[error("not an MQTT 3.1, 3.1.1 or 5 CONNECT")]
    BadProtocol,
    /// A CONNECT of protocol "MQTT" at a level the hub does not speak (MQTT-3.1.2-2: CONNACK return code 1, in
    /// the 3.1.1 form, which a client of any version can read).
    #[error("MQTT protocol level {0} is not supported; use 4 (3.1.1) or 5")]
    UnsupportedLevel(u8),
    /// A 3.1.1 CONNECT with an empty client id and clean session 0 (3.1.1 §3.1.3.1: return code 2).
    #[error("empty client id without clean session")]
    ClientIdRejected,
}

/// The codec of one connection.
#[derive(Debug)]
pub enum Wire {
    /// Before CONNECT: the version is not known yet.
    Detecting {
        /// Inbound packet size limit.
        max_packet: u32,
    },
    /// MQTT 3.1.1.
    V3(v3::Codec),
    /// MQTT 5.
    V5(v5::Codec),
}

impl Wire {
    /// A codec waiting for CONNECT.
    pub fn new(max_packet: u32) -> Self {
        Wire::Detecting { max_packet }
    }

    /// The version, once known.
    pub fn version(&self) -> Option<Version> {
        match self {
            Wire::Detecting { .. } => None,
            Wire::V3(_) => Some(Version::V3),
            Wire::V5(_) => Some(Version::V5),
        }
    }

    /// Decodes the next complete packet from `buf`, if there is one.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<In>, WireError> {
        if let Wire::Detecting { max_packet } = *self {
            // Before the codec, which takes a name and a level that do not belong together (MQIsdp at level 4 or 5).
            if let Some(level) = unsupported_level(buf) {
                return Err(WireError::UnsupportedLevel(level));
            }
            match VersionCodec.decode(buf) {
                Ok(None) => return Ok(None),
                Ok(Some(ProtocolVersion::MQTT3)) => *self = Wire::V3(v3::Codec::new(max_packet)),
                Ok(Some(ProtocolVersion::MQTT5)) => *self = Wire::V5(v5::Codec::new(max_packet, 0)),
                Err(_) => return Err(WireError::BadProtocol),
            }
        }
        match self {
            Wire::Detecting { .. } => Ok(None),
            Wire::V3(codec) => Ok(codec.decode(buf).map_err(map_err)?.map(|(p, _)| from_v3(p))),
            Wire::V5(codec) => Ok(codec.decode(buf).map_err(map_err)?.map(|(p, _)| from_v5(p))),
        }
    }

    /// Encodes `out` into `buf`. Packets with no 3.1.1 form (DISCONNECT) encode to nothing there.
    pub fn encode(&mut self, out: Out, buf: &mut BytesMut) {
        let result = match self {
            Wire::Detecting { .. } => Ok(()),
            Wire::V3(codec) => match to_v3(out) {
                Some(p) => codec.encode(p, buf).map_err(|e| e.to_string()),
                None => Ok(()),
            },
            Wire::V5(codec) => codec.encode(to_v5(out), buf).map_err(|e| e.to_string()),
        };
        if let Err(e) = result {
            // Only our own packets are encoded here; failing means a bug, not bad input.
            tracing::error!(error = %e, "could not encode an MQTT packet");
        }
    }
}

/// The 3.1.1 CONNACK "unacceptable protocol version" (return code 1).
pub const CONNACK_UNSUPPORTED_LEVEL: [u8; 4] = [0x20, 0x02, 0x00, 0x01];

/// The level of a CONNECT whose protocol name and level the hub does not speak together, if `buf` starts with
/// one: "MQTT" at a level other than 4 (3.1.1) or 5, or "MQIsdp" at a level other than 3 (3.1 itself is refused
/// after decoding, also with return code 1).
fn unsupported_level(buf: &[u8]) -> Option<u8> {
    // Fixed header (type CONNECT, flags 0), a remaining length of 1 to 4 bytes, then the name and the level.
    if buf.first() != Some(&0x10) {
        return None;
    }
    let len_bytes = buf.iter().skip(1).take(4).position(|b| b & 0x80 == 0)? + 1;
    match buf.get(1 + len_bytes..)? {
        [0, 4, b'M', b'Q', b'T', b'T', level, ..] if !matches!(level, 4 | 5) => Some(*level),
        [0, 6, b'M', b'Q', b'I', b's', b'd', b'p', level, ..] if *level != 3 => Some(*level),
        _ => None,
    }
}

fn map_err(e: DecodeError) -> WireError {
    match e {
        DecodeError::MaxSizeExceeded { size, max } => WireError::TooLarge { size, max },
        DecodeError::InvalidClientId => WireError::ClientIdRejected,
        other => WireError::Malformed(other.to_string()),
    }
}

fn qos_num(q: QoS) -> u8 {
    match q {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}

fn publish_in(p: Publish) -> In {
    let props = p.properties.as_ref();
    let violation = if p.dup && p.qos == QoS::AtMostOnce {
        Some(PublishViolation::DupOnQos0)
    } else if props.is_some_and(|x| x.topic_alias.is_some()) {
        Some(PublishViolation::TopicAlias)
    } else if props.is_some_and(|x| !x.subscription_ids.is_empty()) {
        Some(PublishViolation::SubscriptionIdentifier)
    } else {
        None
    };
    In::Publish {
        topic: p.topic,
        payload: p.payload,
        qos: qos_num(p.qos),
        retain: p.retain,
        packet_id: p.packet_id,
        violation,
    }
}

fn from_v3(p: v3::Packet) -> In {
    match p {
        v3::Packet::Connect(c) => In::Connect {
            client_id: c.client_id,
            keep_alive: c.keep_alive,
            clean: c.clean_session,
            session_expiry: if c.clean_session { 0 } else { u32::MAX },
            receive_max: u16::MAX,
            max_packet_size: None,
            legacy_31: c.protocol.0 == 3,
            will: c.last_will.map(|w| WillIn {
                topic: w.topic,
                payload: w.message,
                qos: qos_num(w.qos),
                retain: w.retain,
                delay_secs: 0,
            }),
        },
        v3::Packet::Publish(p) => publish_in(*p),
        v3::Packet::PublishAck { packet_id } => In::PubAck { packet_id },
        v3::Packet::Subscribe { packet_id, topic_filters } => {
            In::Subscribe { packet_id, filters: topic_filters.into_iter().map(|(f, q)| (f, qos_num(q))).collect() }
        }
        v3::Packet::Unsubscribe { packet_id, topic_filters } => In::Unsubscribe { packet_id, filters: topic_filters },
        v3::Packet::PingRequest => In::PingReq,
        v3::Packet::Disconnect => In::Disconnect { with_will: false, session_expiry: None },
        v3::Packet::ConnectAck(_) => In::Unexpected("CONNACK"),
        v3::Packet::PublishReceived { .. } => In::Unexpected("PUBREC"),
        v3::Packet::PublishRelease { .. } => In::Unexpected("PUBREL"),
        v3::Packet::PublishComplete { .. } => In::Unexpected("PUBCOMP"),
        v3::Packet::SubscribeAck { .. } => In::Unexpected("SUBACK"),
        v3::Packet::UnsubscribeAck { .. } => In::Unexpected("UNSUBACK"),
        v3::Packet::PingResponse => In::Unexpected("PINGRESP"),
    }
}

fn from_v5(p: v5::Packet) -> In {
    match p {
        v5::Packet::Connect(c) => In::Connect {
            client_id: c.client_id,
            keep_alive: c.keep_alive,
            clean: c.clean_start,
            session_expiry: c.session_expiry_interval_secs,
            receive_max: c.receive_max.map_or(u16::MAX, NonZeroU16::get),
            max_packet_size: c.max_packet_size.map(std::num::NonZeroU32::get),
            legacy_31: false,
            will: c.last_will.map(|w| WillIn {
                topic: w.topic,
                payload: w.message,
                qos: qos_num(w.qos),
                retain: w.retain,
                delay_secs: w.will_delay_interval_sec.unwrap_or(0),
            }),
        },
        v5::Packet::Publish(p) => publish_in(*p),
        v5::Packet::PublishAck(a) => In::PubAck { packet_id: a.packet_id },
        v5::Packet::Subscribe(s) => In::Subscribe {
            packet_id: s.packet_id,
            filters: s.topic_filters.into_iter().map(|(f, o)| (f, qos_num(o.qos))).collect(),
        },
        v5::Packet::Unsubscribe(u) => In::Unsubscribe { packet_id: u.packet_id, filters: u.topic_filters },
        v5::Packet::PingRequest => In::PingReq,
        v5::Packet::Disconnect(d) => In::Disconnect {
            // MQTT-3.14.4-3: only reason 0x00 discards the will.
            with_will: d.reason_code != v5::DisconnectReasonCode::NormalDisconnection,
            session_expiry: d.session_expiry_interval_secs,
        },
        v5::Packet::ConnectAck(_) => In::Unexpected("CONNACK"),
        v5::Packet::PublishReceived(_) => In::Unexpected("PUBREC"),
        v5::Packet::PublishRelease(_) => In::Unexpected("PUBREL"),
        v5::Packet::PublishComplete(_) => In::Unexpected("PUBCOMP"),
        v5::Packet::SubscribeAck(_) => In::Unexpected("SUBACK"),
        v5::Packet::UnsubscribeAck(_) => In::Unexpected("UNSUBACK"),
        v5::Packet::PingResponse => In::Unexpected("PINGRESP"),
        v5::Packet::Auth(_) => In::Unexpected("AUTH"),
    }
}

fn to_v3(out: Out) -> Option<v3::Packet> {
    Some(match out {
        Out::ConnAck { reason, session_present, .. } => v3::Packet::ConnectAck(v3::ConnectAck {
            session_present,
            return_code: match reason {
                Reason::Success => v3::ConnectAckReason::ConnectionAccepted,
                Reason::ClientIdNotValid => v3::ConnectAckReason::IdentifierRejected,
                Reason::UnsupportedProtocolVersion => v3::ConnectAckReason::UnacceptableProtocolVersion,
                Reason::NotAuthorized => v3::ConnectAckReason::NotAuthorized,
                _ => v3::ConnectAckReason::ServiceUnavailable,
            },
        }),
        Out::PubAck { packet_id, .. } => v3::Packet::PublishAck { packet_id },
        Out::SubAck { packet_id, results } => v3::Packet::SubscribeAck {
            packet_id,
            status: results
                .into_iter()
                .map(|r| match r {
                    Ok(0) => v3::SubscribeReturnCode::Success(QoS::AtMostOnce),
                    Ok(_) => v3::SubscribeReturnCode::Success(QoS::AtLeastOnce),
                    Err(_) => v3::SubscribeReturnCode::Failure,
                })
                .collect(),
        },
        Out::UnsubAck { packet_id, .. } => v3::Packet::UnsubscribeAck { packet_id },
        Out::PingResp => v3::Packet::PingResponse,
        Out::Publish { topic, payload, packet_id } => v3::Packet::Publish(Box::new(Publish {
            dup: false,
            retain: false,
            qos: QoS::AtLeastOnce,
            topic,
            packet_id: Some(packet_id),
            payload,
            properties: None,
        })),
        Out::Disconnect { .. } => return None,
    })
}

fn to_v5(out: Out) -> v5::Packet {
    match out {
        Out::ConnAck {
            reason,
            session_present,
            receive_max,
            max_packet_size,
            server_keep_alive,
            assigned_client_id,
            reason_string,
        } => v5::Packet::ConnectAck(Box::new(v5::ConnectAck {
            session_present,
            reason_code: connack_reason(reason),
            receive_max: NonZeroU16::new(receive_max).unwrap_or(NonZeroU16::MIN),
            max_qos: QoS::AtLeastOnce,
            max_packet_size: Some(max_packet_size),
            retain_available: false,
            wildcard_subscription_available: false,
            subscription_identifiers_available: false,
            shared_subscription_available: false,
            server_keepalive_sec: server_keep_alive,
            assigned_client_id,
            reason_string: reason_string.map(ByteString::from),
            ..v5::ConnectAck::default()
        })),
        Out::PubAck { packet_id, reason, reason_string, properties } => v5::Packet::PublishAck(v5::PublishAck {
            packet_id,
            reason_code: puback_reason(reason),
            properties,
            reason_string: reason_string.map(ByteString::from),
        }),
        Out::SubAck { packet_id, results } => v5::Packet::SubscribeAck(v5::SubscribeAck {
            packet_id,
            properties: Vec::new(),
            reason_string: None,
            status: results
                .into_iter()
                .map(|r| match r {
                    Ok(0) => v5::SubscribeAckReason::GrantedQos0,
                    Ok(_) => v5::SubscribeAckReason::GrantedQos1,
                    Err(Reason::TopicFilterInvalid) => v5::SubscribeAckReason::TopicFilterInvalid,
                    Err(Reason::QuotaExceeded) => v5::SubscribeAckReason::QuotaExceeded,
                    Err(_) => v5::SubscribeAckReason::NotAuthorized,
                })
                .collect(),
        }),
        Out::UnsubAck { packet_id, count } => v5::Packet::UnsubscribeAck(v5::UnsubscribeAck {
            packet_id,
            properties: Vec::new(),
            reason_string: None,
            status: vec![v5::UnsubscribeAckReason::Success; count],
        }),
        Out::PingResp => v5::Packet::PingResponse,
        Out::Publish { topic, payload, packet_id } => v5::Packet::Publish(Box::new(Publish {
            dup: false,
            retain: false,
            qos: QoS::AtLeastOnce,
            topic,
            packet_id: Some(packet_id),
            payload,
            properties: Some(v5::PublishProperties::default()),
        })),
        Out::Disconnect { reason, reason_string } => v5::Packet::Disconnect(v5::Disconnect {
            reason_code: disconnect_reason(reason),
            session_expiry_interval_secs: None,
            server_reference: None,
            reason_string: reason_string.map(ByteString::from),
            user_properties: Vec::new(),
        }),
    }
}

fn connack_reason(r: Reason) -> v5::ConnectAckReason {
    use v5::ConnectAckReason as C;
    match r {
        Reason::Success => C::Success,
        Reason::ClientIdNotValid => C::ClientIdentifierNotValid,
        Reason::UnsupportedProtocolVersion => C::UnsupportedProtocolVersion,
        Reason::NotAuthorized => C::NotAuthorized,
        Reason::MalformedPacket => C::MalformedPacket,
        Reason::ProtocolError => C::ProtocolError,
        Reason::PacketTooLarge => C::PacketTooLarge,
        Reason::QuotaExceeded => C::QuotaExceeded,
        Reason::TopicNameInvalid => C::TopicNameInvalid,
        Reason::PayloadFormatInvalid => C::PayloadFormatInvalid,
        Reason::RetainNotSupported => C::RetainNotSupported,
        Reason::QosNotSupported => C::QosNotSupported,
        Reason::ServerUnavailable | Reason::ServerShuttingDown => C::ServerUnavailable,
        _ => C::UnspecifiedError,
    }
}

fn puback_reason(r: Reason) -> v5::PublishAckReason {
    use v5::PublishAckReason as P;
    match r {
        Reason::Success => P::Success,
        Reason::NotAuthorized => P::NotAuthorized,
        Reason::TopicNameInvalid => P::TopicNameInvalid,
        Reason::QuotaExceeded => P::QuotaExceeded,
        Reason::PayloadFormatInvalid => P::PayloadFormatInvalid,
        Reason::ImplementationSpecific => P::ImplementationSpecificError,
        _ => P::UnspecifiedError,
    }
}

fn disconnect_reason(r: Reason) -> v5::DisconnectReasonCode {
    use v5::DisconnectReasonCode as D;
    match r {
        Reason::Success => D::NormalDisconnection,
        Reason::MalformedPacket => D::MalformedPacket,
        Reason::ProtocolError => D::ProtocolError,
        Reason::NotAuthorized => D::NotAuthorized,
        Reason::ServerUnavailable => D::ServerBusy,
        Reason::ServerShuttingDown => D::ServerShuttingDown,
        Reason::KeepAliveTimeout => D::KeepAliveTimeout,
        Reason::SessionTakenOver => D::SessionTakenOver,
        Reason::TopicFilterInvalid => D::TopicFilterInvalid,
        Reason::TopicNameInvalid => D::TopicNameInvalid,
        Reason::ReceiveMaximumExceeded => D::ReceiveMaximumExceeded,
        Reason::TopicAliasInvalid => D::TopicAliasInvalid,
        Reason::PacketTooLarge => D::PacketTooLarge,
        Reason::MessageRateTooHigh => D::MessageRateTooHigh,
        Reason::QuotaExceeded => D::QuotaExceeded,
        Reason::AdministrativeAction => D::AdministrativeAction,
        Reason::PayloadFormatInvalid => D::PayloadFormatInvalid,
        Reason::RetainNotSupported => D::RetainNotSupported,
        Reason::QosNotSupported => D::QosNotSupported,
        Reason::ImplementationSpecific => D::ImplementationSpecificError,
        Reason::ClientIdNotValid | Reason::UnsupportedProtocolVersion | Reason::UnspecifiedError => D::UnspecifiedError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> Result<Vec<In>, WireError> {
        let mut wire = Wire::new(64 * 1024);
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(p) = wire.decode(&mut buf)? {
            out.push(p);
        }
        Ok(out)
    }

    // CONNECT, MQTT 3.1.1, clean session, keep-alive 60, client id "dev".
    const CONNECT_311: &[u8] = &[0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 3, b'd', b'e', b'v'];

    #[test]
    fn detects_311_and_decodes_connect() {
        let got = decode_all(CONNECT_311).expect("decodes");
        assert!(matches!(&got[..], [In::Connect { keep_alive: 60, clean: true, .. }]));
    }

    #[test]
    fn huge_declared_length_is_refused_before_buffering() {
        let mut bytes = CONNECT_311.to_vec();
        // PUBLISH declaring 256 MiB - 1 (the largest MQTT remaining length).
        bytes.extend_from_slice(&[0x30, 0xff, 0xff, 0xff, 0x7f]);
        let mut wire = Wire::new(64 * 1024);
        let mut buf = BytesMut::from(&bytes[..]);
        assert!(matches!(wire.decode(&mut buf), Ok(Some(In::Connect { .. }))));
        assert!(matches!(wire.decode(&mut buf), Err(WireError::TooLarge { .. })));
        assert!(buf.capacity() < 1024 * 1024, "must not reserve the declared size");
    }

    #[test]
    fn garbage_first_packet_is_bad_protocol() {
        assert!(matches!(decode_all(b"GET / HTTP/1.1\r\n\r\n"), Err(WireError::BadProtocol)));
        assert!(matches!(decode_all(&[0x10, 6, 0, 4, b'X', b'Q', b'T', b'T', 4, 0]), Err(WireError::BadProtocol)));
    }

    #[test]
    fn truncated_packets_wait_for_more() {
        for n in 0..CONNECT_311.len() {
            assert!(decode_all(&CONNECT_311[..n]).expect("no error on a prefix").is_empty(), "prefix {n}");
        }
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let mut bytes = CONNECT_311.to_vec();
            bytes.extend_from_slice(&tail);
            let _ = decode_all(&bytes);
            let _ = decode_all(&tail);
        }
    }
}
