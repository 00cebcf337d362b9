//! Protobuf messages inside JSON records.
//!
//! The CRI types are prost messages without serde support, so a record
//! keeps a CRI config as its protobuf encoding in base64 (`#[serde(with =
//! "crate::store::proto")]`): the bytes kubelet sent, losslessly, in a form
//! any later berth decodes even if fields were added since.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Deserializer, Serializer};

pub fn serialize<M: prost::Message, S: Serializer>(
    message: &M,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&STANDARD.encode(message.encode_to_vec()))
}

pub fn deserialize<'de, M: prost::Message + Default, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<M, D::Error> {
    let text = String::deserialize(deserializer)?;
    let bytes = STANDARD
        .decode(text.as_bytes())
        .map_err(serde::de::Error::custom)?;
    M::decode(bytes.as_slice()).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use berth_proto::cri::v1 as cri;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Holder {
        #[serde(with = "super")]
        config: cri::PodSandboxConfig,
    }

    #[test]
    fn round_trips() {
        let holder = Holder {
            config: cri::PodSandboxConfig {
                hostname: "h".into(),
                labels: [("a".to_owned(), "b".to_owned())].into(),
                ..Default::default()
            },
        };
        let json = serde_json::to_string(&holder).expect("json");
        assert!(json.starts_with("{\"config\":\""), "{json}");
        let back: Holder = serde_json::from_str(&json).expect("decode");
        assert_eq!(back, holder);
        assert!(serde_json::from_str::<Holder>("{\"config\":\"!!\"}").is_err());
    }
}
