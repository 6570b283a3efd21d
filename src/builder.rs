//! One configuration style for every part: a builder. The parts with
//! callbacks (`Beater`, `Monitor`, `Scanner`) have hand-written builders;
//! the parts configured by plain values (`Hub`, `PeerClient`,
//! `MonitorService`) get theirs from [`config_builder!`]: one setter per
//! field of the configuration struct, which stays public as the builder's
//! product (to store, compare, or build from a file).

/// Defines `$builder` over the configuration struct `$config` (which must
/// implement `Default`): a setter per field listed under `set` taking its
/// type (so `max_peers(100)` needs no suffix), under `into` taking
/// `impl Into<T>` (strings, addresses), and under `some`, for `Option<T>`
/// fields, taking `impl Into<T>` and setting `Some`. Each setter's doc
/// links the field's.
macro_rules! config_builder {
    (
        $(#[$meta:meta])*
        pub struct $builder:ident for $config:ident {
            set { $( $field:ident: $ty:ty ),* $(,)? }
            into { $( $conv:ident: $conv_ty:ty ),* $(,)? }
            some { $( $opt:ident: $inner:ty ),* $(,)? }
        }
    ) => {
        $(#[$meta])*
        #[must_use]
        #[derive(Clone, Default)]
        pub struct $builder {
            config: $config,
        }

        impl $builder {
            $(
                #[doc = concat!("Sets [`", stringify!($config), "::", stringify!($field), "`].")]
                pub fn $field(mut self, value: $ty) -> Self {
                    self.config.$field = value;
                    self
                }
            )*
            $(
                #[doc = concat!("Sets [`", stringify!($config), "::", stringify!($conv), "`].")]
                pub fn $conv(mut self, value: impl Into<$conv_ty>) -> Self {
                    self.config.$conv = value.into();
                    self
                }
            )*
            $(
                #[doc = concat!("Sets [`", stringify!($config), "::", stringify!($opt), "`] to `Some(value)`.")]
                pub fn $opt(mut self, value: impl Into<$inner>) -> Self {
                    self.config.$opt = Some(value.into());
                    self
                }
            )*

            /// The configuration so far.
            pub fn config(&self) -> &$config {
                &self.config
            }

            /// The configuration, to keep or to start with later.
            pub fn into_config(self) -> $config {
                self.config
            }
        }

        // Every field has a setter: a field added to the configuration but
        // not listed here fails to compile ("pattern does not mention field").
        const _: fn($config) = |config| {
            let $config { $( $field: _, )* $( $conv: _, )* $( $opt: _, )* } = config;
        };

        impl From<$config> for $builder {
            fn from(config: $config) -> Self {
                $builder { config }
            }
        }
    };
}

pub(crate) use config_builder;
