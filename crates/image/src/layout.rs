pub struct Image;
pub struct ImageConfig;
pub struct Images;
