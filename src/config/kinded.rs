//! A `source:` section read as its adapter's config once its `kind` key is
//! skipped ([`Kinded`]): a deserializer wrapper that hides one mapping key,
//! so the adapter sees every other key straight from the YAML deserializer,
//! nothing buffered, and its `Spanned` fields keep their line and column.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IgnoredAny, IntoDeserializer, MapAccess, Visitor};

/// A source section read as `T` once its `kind` key is skipped: `T` sees every
/// other key, straight from the YAML deserializer (nothing buffered).
#[derive(Debug)]
pub(super) struct Kinded<T>(pub(super) T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Kinded<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(WithoutKind(deserializer)).map(Kinded)
    }
}

struct WithoutKind<D>(D);

impl<'de, D: de::Deserializer<'de>> de::Deserializer<'de> for WithoutKind<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(SkipKind(visitor))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_struct(name, fields, SkipKind(visitor))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
        identifier ignored_any
    }
}

struct SkipKind<V>(V);

impl<'de, V: Visitor<'de>> Visitor<'de> for SkipKind<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.0.visit_map(Keys(map))
    }
}

struct Keys<A>(A);

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Keys<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        loop {
            match self.0.next_key::<String>()? {
                None => return Ok(None),
                Some(key) if key == "kind" => {
                    self.0.next_value::<IgnoredAny>()?;
                }
                Some(key) => return seed.deserialize(key.into_deserializer()).map(Some),
            }
        }
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, A::Error> {
        self.0.next_value_seed(seed)
    }
}
